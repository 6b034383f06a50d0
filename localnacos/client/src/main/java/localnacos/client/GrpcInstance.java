package localnacos.client;

import com.alibaba.nacos.api.NacosFactory;
import com.alibaba.nacos.api.PropertyKeyConst;
import com.alibaba.nacos.api.exception.NacosException;
import com.alibaba.nacos.api.naming.NamingService;
import com.alibaba.nacos.api.naming.listener.Event;
import com.alibaba.nacos.api.naming.listener.EventListener;
import com.alibaba.nacos.api.naming.listener.NamingEvent;
import com.alibaba.nacos.api.naming.pojo.Instance;
import java.io.IOException;
import java.io.InputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicBoolean;

/**
 * Registers one ephemeral instance with the real Nacos Java client (gRPC), subscribes to its
 * service, and reports on stdout, one JSON object a line:
 * {@code {"event":"registered"}}, {@code {"event":"push","hosts":[...]}} for every pushed list,
 * {@code {"event":"deregistered"}} and {@code {"event":"error","message":...}}.
 *
 * <p>Arguments: serverAddr namespace group service ip port cluster [username password].
 * Deregisters and exits when stdin closes or on SIGTERM/SIGINT.
 */
public final class GrpcInstance {

    private static final PrintStream OUT =
            new PrintStream(new java.io.FileOutputStream(java.io.FileDescriptor.out), true, StandardCharsets.UTF_8);

    private GrpcInstance() {
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 7 && args.length != 9) {
            System.err.println("usage: serverAddr namespace group service ip port cluster [username password]");
            System.exit(2);
        }
        String serverAddr = args[0];
        String namespace = args[1];
        String group = args[2];
        String service = args[3];
        String ip = args[4];
        int port = Integer.parseInt(args[5]);
        String cluster = args[6];

        Properties props = new Properties();
        props.setProperty(PropertyKeyConst.SERVER_ADDR, serverAddr);
        if (!namespace.isEmpty() && !"public".equals(namespace)) {
            props.setProperty(PropertyKeyConst.NAMESPACE, namespace);
        }
        if (args.length == 9) {
            props.setProperty(PropertyKeyConst.USERNAME, args[7]);
            props.setProperty(PropertyKeyConst.PASSWORD, args[8]);
        }
        // Read the served list from the server on start, not from a snapshot left by an earlier run.
        props.setProperty("namingLoadCacheAtStart", "false");

        NamingService naming = NacosFactory.createNamingService(props);
        Instance instance = new Instance();
        instance.setIp(ip);
        instance.setPort(port);
        instance.setClusterName(cluster);
        instance.setEphemeral(true);
        instance.setWeight(1.0);
        instance.setHealthy(true);
        instance.setEnabled(true);

        EventListener listener = (Event event) -> {
            if (event instanceof NamingEvent) {
                emit("{\"event\":\"push\",\"service\":" + quote(((NamingEvent) event).getServiceName())
                        + ",\"hosts\":" + hosts(((NamingEvent) event).getInstances()) + "}");
            }
        };
        naming.subscribe(service, group, listener);
        naming.registerInstance(service, group, instance);
        emit("{\"event\":\"registered\",\"ip\":" + quote(ip) + ",\"port\":" + port + "}");

        AtomicBoolean stopped = new AtomicBoolean(false);
        CountDownLatch done = new CountDownLatch(1);
        Runnable stop = () -> {
            if (!stopped.compareAndSet(false, true)) {
                return;
            }
            try {
                naming.deregisterInstance(service, group, instance);
                emit("{\"event\":\"deregistered\"}");
                naming.shutDown();
            } catch (NacosException e) {
                emit("{\"event\":\"error\",\"message\":" + quote(String.valueOf(e.getErrMsg())) + "}");
            } finally {
                done.countDown();
            }
        };
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            stop.run();
            try {
                done.await();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }));

        Thread stdinWatcher = new Thread(() -> {
            try (InputStream in = System.in) {
                byte[] buffer = new byte[256];
                while (in.read(buffer) >= 0) {
                    // Anything written is ignored; only end of input matters.
                }
            } catch (IOException e) {
                // A broken stdin means the parent is gone: stop as on end of input.
            }
            stop.run();
            System.exit(0);
        }, "stdin-watcher");
        stdinWatcher.setDaemon(true);
        stdinWatcher.start();
        done.await();
    }

    private static synchronized void emit(String line) {
        OUT.println(line);
        OUT.flush();
    }

    private static String hosts(List<Instance> instances) {
        StringBuilder sb = new StringBuilder("[");
        for (Instance i : instances) {
            if (sb.length() > 1) {
                sb.append(',');
            }
            sb.append("{\"ip\":").append(quote(i.getIp()))
                    .append(",\"port\":").append(i.getPort())
                    .append(",\"cluster\":").append(quote(i.getClusterName()))
                    .append(",\"enabled\":").append(i.isEnabled())
                    .append(",\"healthy\":").append(i.isHealthy())
                    .append(",\"weight\":").append(i.getWeight())
                    .append('}');
        }
        return sb.append(']').toString();
    }

    private static String quote(String s) {
        if (s == null) {
            return "null";
        }
        StringBuilder sb = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"' -> sb.append("\\\"");
                case '\\' -> sb.append("\\\\");
                case '\n' -> sb.append("\\n");
                case '\r' -> sb.append("\\r");
                case '\t' -> sb.append("\\t");
                default -> {
                    if (c < 0x20) {
                        sb.append(String.format("\\u%04x", (int) c));
                    } else {
                        sb.append(c);
                    }
                }
            }
        }
        return sb.append('"').toString();
    }
}
