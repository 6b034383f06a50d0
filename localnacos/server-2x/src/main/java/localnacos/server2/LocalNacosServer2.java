package localnacos.server2;

import com.alibaba.nacos.auth.AuthManager;
import com.alibaba.nacos.auth.exception.AccessException;
import com.alibaba.nacos.auth.model.Permission;
import com.alibaba.nacos.auth.model.User;
import com.alibaba.nacos.consistency.cp.CPProtocol;
import com.alibaba.nacos.consistency.cp.RequestProcessor4CP;
import com.alibaba.nacos.core.code.ControllerMethodsCache;
import com.alibaba.nacos.core.distributed.ProtocolManager;
import com.alibaba.nacos.core.distributed.raft.JRaftProtocol;
import com.alibaba.nacos.core.distributed.raft.JRaftServer;
import com.alipay.sofa.jraft.Node;
import java.lang.reflect.Field;
import java.lang.reflect.Method;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import org.springframework.beans.factory.SmartInitializingSingleton;
import org.springframework.context.ApplicationContext;
import javax.annotation.PostConstruct;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.actuate.autoconfigure.security.servlet.ManagementWebSecurityAutoConfiguration;
import org.springframework.boot.autoconfigure.security.servlet.SecurityAutoConfiguration;
import org.springframework.boot.autoconfigure.security.servlet.UserDetailsServiceAutoConfiguration;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.boot.web.servlet.ServletComponentScan;
import org.springframework.scheduling.annotation.EnableScheduling;
import org.springframework.stereotype.Component;

/**
 * Starts a standalone Nacos 2.x server from the published server modules (core, naming, config).
 *
 * <p>The published modules do not include the console module, which is where a packaged Nacos
 * server registers its HTTP controllers with {@link ControllerMethodsCache}. The request filters
 * look every /v1 call up in that cache, so without the registration below every naming and
 * config call fails.
 *
 * <p>The console module also holds the only implementation of Nacos 2.0's {@link AuthManager}
 * (users, roles, login). Without it this server can only run with auth off; the core's auth filter
 * still needs a bean of that type, so {@link NoAuthManager} refuses every authentication and is
 * never consulted while {@code nacos.core.auth.enabled=false}.
 *
 * <p>The republished 2.0.4 core module ships {@code JRaftProtocol.addRequestProcessors} as an empty
 * method, so no Raft group is ever created and every write that Nacos routes through its CP
 * protocol (instance metadata such as {@code enabled=false}, persistent instances) fails with
 * "No corresponding Raft Group found". {@link RaftGroups} does what that method does upstream:
 * it creates one Raft group per request processor, then waits until this single node leads each
 * of them, before the HTTP port opens. Configuration comes from system properties set by the
 * launcher.
 */
@SpringBootApplication(
        scanBasePackages = {"com.alibaba.nacos", "localnacos.server2"},
        exclude = {
            // Spring Security is on the classpath through the core module; a packaged server
            // configures it in the console module to let every request through to Nacos's filters.
            SecurityAutoConfiguration.class,
            UserDetailsServiceAutoConfiguration.class,
            ManagementWebSecurityAutoConfiguration.class
        })
@ServletComponentScan(basePackages = "com.alibaba.nacos")
@EnableScheduling
public class LocalNacosServer2 {

    public static void main(String[] args) {
        exitWhenStdinCloses();
        SpringApplication.run(LocalNacosServer2.class, args);
    }

    /**
     * With {@code -Dlocalnacos.exitOnStdinClose=true}, exits when standard input reaches its end:
     * the launcher holds the other end of the pipe, so the server dies with it even when the
     * launcher is killed without a chance to clean up.
     */
    private static void exitWhenStdinCloses() {
        if (!Boolean.getBoolean("localnacos.exitOnStdinClose")) {
            return;
        }
        Thread watcher = new Thread(() -> {
            byte[] buffer = new byte[64];
            try {
                while (System.in.read(buffer) >= 0) {
                    // Input is ignored; only its end matters.
                }
            } catch (java.io.IOException e) {
                // A broken pipe means the launcher is gone as well.
            }
            System.out.println("localnacos: launcher gone, exiting");
            System.exit(0);
        }, "localnacos-stdin-watcher");
        watcher.setDaemon(true);
        watcher.start();
    }

    /** Registers the controllers of the modules on the classpath with Nacos's method cache. */
    @Component
    public static class ControllerRegistration {

        private final ControllerMethodsCache methodsCache;

        public ControllerRegistration(ControllerMethodsCache methodsCache) {
            this.methodsCache = methodsCache;
        }

        @PostConstruct
        public void register() {
            methodsCache.initClassMethod("com.alibaba.nacos.core.controller");
            methodsCache.initClassMethod("com.alibaba.nacos.naming.controllers");
            methodsCache.initClassMethod("com.alibaba.nacos.config.server.controller");
        }
    }

    /** Stands in for the console's user store: this server has none, so auth must stay off. */
    @Component
    public static class NoAuthManager implements AuthManager {

        private static final String MESSAGE =
                "this Nacos 2.x server runs without the console module and cannot authenticate";

        @Override
        public User login(Object request) throws AccessException {
            throw new AccessException(MESSAGE);
        }

        @Override
        public User loginRemote(Object request) throws AccessException {
            throw new AccessException(MESSAGE);
        }

        @Override
        public void auth(Permission permission, User user) throws AccessException {
            throw new AccessException(MESSAGE);
        }
    }

    /** Creates the Raft groups that the republished core module no longer creates by itself. */
    @Component
    public static class RaftGroups implements SmartInitializingSingleton {

        private static final long LEADER_WAIT_MILLIS = 60_000L;

        private final ApplicationContext context;

        public RaftGroups(ApplicationContext context) {
            this.context = context;
        }

        @Override
        public void afterSingletonsInstantiated() {
            try {
                createGroups();
            } catch (ReflectiveOperationException | InterruptedException e) {
                throw new IllegalStateException("cannot create the Nacos Raft groups", e);
            }
        }

        private void createGroups() throws ReflectiveOperationException, InterruptedException {
            CPProtocol<?, ?> protocol = context.getBean(ProtocolManager.class).getCpProtocol();
            if (!(protocol instanceof JRaftProtocol)) {
                return;
            }
            Field serverField = JRaftProtocol.class.getDeclaredField("raftServer");
            serverField.setAccessible(true);
            JRaftServer server = (JRaftServer) serverField.get(protocol);
            List<RequestProcessor4CP> missing = new ArrayList<>();
            for (RequestProcessor4CP processor : context.getBeansOfType(RequestProcessor4CP.class).values()) {
                if (server.findNodeByGroup(processor.group()) == null) {
                    missing.add(processor);
                }
            }
            if (missing.isEmpty()) {
                return;
            }
            Method create = JRaftServer.class.getDeclaredMethod("createMultiRaftGroup", Collection.class);
            create.setAccessible(true);
            create.invoke(server, missing);
            long deadline = System.currentTimeMillis() + LEADER_WAIT_MILLIS;
            for (RequestProcessor4CP processor : missing) {
                String group = processor.group();
                while (true) {
                    Node node = server.findNodeByGroup(group);
                    if (node != null && node.isLeader()) {
                        System.out.println("localnacos: raft group " + group + " is led by this node");
                        break;
                    }
                    if (System.currentTimeMillis() > deadline) {
                        throw new IllegalStateException("no Raft leader for group " + group);
                    }
                    Thread.sleep(100L);
                }
            }
        }
    }
}
