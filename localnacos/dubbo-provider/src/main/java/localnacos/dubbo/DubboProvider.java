package localnacos.dubbo;

import java.io.IOException;
import java.io.InputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicBoolean;
import org.apache.dubbo.config.ApplicationConfig;
import org.apache.dubbo.config.ProtocolConfig;
import org.apache.dubbo.config.RegistryConfig;
import org.apache.dubbo.config.ServiceConfig;
import org.apache.dubbo.config.bootstrap.DubboBootstrap;

/**
 * A Dubbo 3 provider of {@link OrderApi} with a Nacos registry, registering both ways
 * ({@code register-mode=all}, or as asked) on port, with its QoS server on qosPort (local calls only).
 * Prints {@code {"event":"started","host":...,"port":...}} once exported and registered (the host is
 * the address Dubbo registers: it refuses loopback addresses and picks the machine's own), and
 * {@code {"event":"stopped"}} at the end.
 *
 * <p>Arguments: serverAddr namespace application port qosPort registerMode [username password]
 * (an empty registerMode leaves Dubbo's default). Stops (unregistering everything) when stdin closes
 * or on SIGTERM/SIGINT.
 */
public final class DubboProvider {

    private static final PrintStream OUT =
            new PrintStream(new java.io.FileOutputStream(java.io.FileDescriptor.out), true, StandardCharsets.UTF_8);

    private DubboProvider() {
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 6 && args.length != 8) {
            System.err.println("usage: serverAddr namespace application port qosPort registerMode [username password]");
            System.exit(2);
        }
        String namespace = args[1];
        int port = Integer.parseInt(args[3]);

        ApplicationConfig application = new ApplicationConfig(args[2]);
        application.setQosEnable(true);
        application.setQosPort(Integer.parseInt(args[4]));
        application.setQosAcceptForeignIp(false);
        if (!args[5].isEmpty()) {
            application.setRegisterMode(args[5]);
        }

        RegistryConfig registry = new RegistryConfig("nacos://" + args[0]);
        registry.setUseAsConfigCenter(false);
        registry.setUseAsMetadataCenter(false);
        Map<String, String> parameters = new HashMap<>();
        if (!namespace.isEmpty() && !"public".equals(namespace)) {
            parameters.put("namespace", namespace);
        }
        registry.setParameters(parameters);
        if (args.length == 8) {
            registry.setUsername(args[6]);
            registry.setPassword(args[7]);
        }

        ProtocolConfig protocol = new ProtocolConfig("dubbo", port);

        ServiceConfig<OrderApi> service = new ServiceConfig<>();
        service.setInterface(OrderApi.class);
        service.setRef(id -> "order " + id);

        DubboBootstrap bootstrap = DubboBootstrap.getInstance();
        bootstrap.application(application).registry(registry).protocol(protocol).service(service).start();
        String host = service.getExportedUrls().get(0).getHost();
        emit("{\"event\":\"started\",\"host\":\"" + host + "\",\"port\":" + port + "}");

        AtomicBoolean stopped = new AtomicBoolean(false);
        CountDownLatch done = new CountDownLatch(1);
        Runnable stop = () -> {
            if (!stopped.compareAndSet(false, true)) {
                return;
            }
            try {
                bootstrap.stop();
                emit("{\"event\":\"stopped\"}");
            } finally {
                done.countDown();
            }
        };
        Runtime.getRuntime().addShutdownHook(new Thread(stop));
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
}
