package shop;

import java.util.Map;

import org.springframework.beans.factory.annotation.Value;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.boot.availability.AvailabilityChangeEvent;
import org.springframework.boot.availability.LivenessState;
import org.springframework.context.ApplicationContext;
import org.springframework.web.bind.annotation.GetMapping;
import org.springframework.web.bind.annotation.PostMapping;
import org.springframework.web.bind.annotation.RestController;

/**
 * A service as the examples expect one: it registers itself in Nacos (Spring Cloud Alibaba, gRPC),
 * answers callers on {@code /hello}, and reports readiness and liveness through Spring Boot's
 * actuator probes. {@code POST /liveness/broken} makes the liveness probe fail from then on, the
 * way an application reports a broken state of its own, so tests can make the kubelet restart it.
 */
@SpringBootApplication
@RestController
public class ShopApplication {

    private final ApplicationContext context;

    @Value("${spring.application.name}")
    private String name;

    @Value("${server.port}")
    private int port;

    public ShopApplication(ApplicationContext context) {
        this.context = context;
    }

    @GetMapping("/hello")
    public Map<String, Object> hello() {
        return Map.of("service", name, "port", port);
    }

    @PostMapping("/liveness/broken")
    public Map<String, Object> breakLiveness() {
        AvailabilityChangeEvent.publish(context, LivenessState.BROKEN);
        return Map.of("liveness", "BROKEN");
    }

    public static void main(String[] args) {
        SpringApplication.run(ShopApplication.class, args);
    }
}
