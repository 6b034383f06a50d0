package bench.provider;

import java.util.Map;

import org.springframework.beans.factory.annotation.Value;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.web.bind.annotation.GetMapping;
import org.springframework.web.bind.annotation.RestController;

/** One endpoint that says which instance answered. Registers itself in Nacos over gRPC. */
@SpringBootApplication
@RestController
public class ProviderApplication {

    @Value("${server.port}")
    private int port;

    @Value("${spring.cloud.nacos.discovery.ip:}")
    private String ip;

    @GetMapping("/hello")
    public Map<String, Object> hello() {
        return Map.of("port", port, "ip", ip);
    }

    public static void main(String[] args) {
        SpringApplication.run(ProviderApplication.class, args);
    }
}
