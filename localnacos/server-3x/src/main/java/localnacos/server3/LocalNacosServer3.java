package localnacos.server3;

import com.alibaba.nacos.NacosServerBasicApplication;
import com.alibaba.nacos.NacosServerWebApplication;
import com.alibaba.nacos.console.NacosConsole;
import com.alibaba.nacos.core.listener.startup.NacosStartUp;
import com.alibaba.nacos.core.listener.startup.NacosStartUpManager;
import com.alibaba.nacos.sys.env.DeploymentType;
import com.alibaba.nacos.sys.env.EnvUtil;
import org.springframework.boot.WebApplicationType;
import org.springframework.boot.builder.SpringApplicationBuilder;
import org.springframework.context.ConfigurableApplicationContext;

/**
 * Starts a standalone Nacos 3.x server (server API and console in one JVM) from the published
 * server modules.
 *
 * <p>Nacos 3 runs three Spring contexts: a non-web core context (storage, naming, config,
 * consistency), and two web contexts that share it as parent: the server API on
 * {@code nacos.server.main.port} (client and admin APIs, gRPC next to it) and the console on
 * {@code nacos.console.port} (console APIs and user management). The packaged server has a
 * bootstrap module that does this; it is not published, so this class does it. Configuration
 * comes from system properties set by the launcher.
 */
public final class LocalNacosServer3 {

    private static final String DEPLOYMENT_TYPE = "nacos.deployment.type";

    private LocalNacosServer3() {
    }

    public static void main(String[] args) {
        exitWhenStdinCloses();
        // Console handlers are chosen by this property (no default): "merged" wires them to the
        // in-process server instead of a remote one.
        System.setProperty(DEPLOYMENT_TYPE, System.getProperty(DEPLOYMENT_TYPE, "merged"));
        EnvUtil.setDeploymentType(DeploymentType.getType(System.getProperty(DEPLOYMENT_TYPE)));

        NacosStartUpManager.start(NacosStartUp.CORE_START_UP_PHASE);
        ConfigurableApplicationContext core = new SpringApplicationBuilder(NacosServerBasicApplication.class)
                .web(WebApplicationType.NONE)
                .run(args);

        NacosStartUpManager.start(NacosStartUp.WEB_START_UP_PHASE);
        new SpringApplicationBuilder(NacosServerWebApplication.class).parent(core).run(args);

        NacosStartUpManager.start(NacosStartUp.CONSOLE_START_UP_PHASE);
        new SpringApplicationBuilder(NacosConsole.class).parent(core).run(args);
        System.out.println("localnacos: all Nacos contexts started");
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
}
