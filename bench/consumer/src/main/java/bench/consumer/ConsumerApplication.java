package bench.consumer;

import java.io.BufferedWriter;
import java.io.IOException;
import java.io.OutputStreamWriter;
import java.net.ConnectException;
import java.net.SocketTimeoutException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.time.Duration;
import java.util.Map;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.ThreadPoolExecutor;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;

import org.springframework.beans.factory.annotation.Value;
import org.springframework.boot.ApplicationArguments;
import org.springframework.boot.ApplicationRunner;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.boot.web.client.RestTemplateBuilder;
import org.springframework.cloud.client.ServiceInstance;
import org.springframework.cloud.client.loadbalancer.LoadBalanced;
import org.springframework.cloud.client.loadbalancer.LoadBalancerLifecycle;
import org.springframework.cloud.client.loadbalancer.Request;
import org.springframework.cloud.client.loadbalancer.Response;
import org.springframework.context.annotation.Bean;
import org.springframework.web.client.HttpStatusCodeException;
import org.springframework.web.client.ResourceAccessException;
import org.springframework.web.client.RestTemplate;

/**
 * Calls {@code http://demo-provider/hello} through Nacos discovery and Spring Cloud LoadBalancer
 * (default settings: round robin, instance lists cached 35 s) at a steady rate, no retries, and
 * writes one JSON line per call: start time, duration, status or error, and the instance chosen.
 */
@SpringBootApplication
public class ConsumerApplication {

    /** The instance the load balancer chose for the call running on this thread. */
    static final ThreadLocal<ServiceInstance> CHOSEN = new ThreadLocal<>();

    public static void main(String[] args) {
        SpringApplication.run(ConsumerApplication.class, args);
    }

    @Bean
    @LoadBalanced
    RestTemplate restTemplate(RestTemplateBuilder builder) {
        return builder.setConnectTimeout(Duration.ofSeconds(1)).setReadTimeout(Duration.ofSeconds(5)).build();
    }

    /** Remembers which instance was chosen, so failed calls can be attributed too. */
    @Bean
    @SuppressWarnings("rawtypes")
    LoadBalancerLifecycle choiceRecorder() {
        return new LoadBalancerLifecycle<Object, Object, ServiceInstance>() {
            @Override
            public void onStart(Request<Object> request) {
            }

            @Override
            public void onStartRequest(Request<Object> request, Response<ServiceInstance> lbResponse) {
                CHOSEN.set(lbResponse.hasServer() ? lbResponse.getServer() : null);
            }

            @Override
            public void onComplete(
                    org.springframework.cloud.client.loadbalancer.CompletionContext<Object, ServiceInstance, Object> ctx) {
            }
        };
    }

    @Bean
    ApplicationRunner load(
            RestTemplate rest,
            @Value("${bench.rate:50}") int rate,
            @Value("${bench.out:}") String out,
            @Value("${bench.url:http://demo-provider/hello}") String url) {
        return (ApplicationArguments args) -> new Load(rest, rate, out, url).run();
    }

    static final class Load {
        private final RestTemplate rest;
        private final int rate;
        private final String out;
        private final String url;
        private final BlockingQueue<String> lines = new ArrayBlockingQueue<>(100_000);
        private final AtomicLong seq = new AtomicLong();

        Load(RestTemplate rest, int rate, String out, String url) {
            this.rest = rest;
            this.rate = rate;
            this.out = out;
            this.url = url;
        }

        void run() throws IOException, InterruptedException {
            BufferedWriter writer = out.isEmpty()
                    ? new BufferedWriter(new OutputStreamWriter(System.out, StandardCharsets.UTF_8))
                    : Files.newBufferedWriter(Path.of(out), StandardCharsets.UTF_8,
                            StandardOpenOption.CREATE, StandardOpenOption.APPEND);
            // Enough workers that a slow instance (connect and read timeouts) never lowers the rate.
            ExecutorService workers = new ThreadPoolExecutor(64, 64, 0, TimeUnit.SECONDS,
                    new ArrayBlockingQueue<>(1000), new ThreadPoolExecutor.AbortPolicy());
            ScheduledExecutorService ticker = Executors.newSingleThreadScheduledExecutor();
            long periodMicros = 1_000_000L / rate;
            ticker.scheduleAtFixedRate(() -> {
                try {
                    workers.execute(this::call);
                } catch (RejectedExecutionException e) {
                    record(System.currentTimeMillis(), 0, null, "Overloaded", null, null);
                }
            }, 0, periodMicros, TimeUnit.MICROSECONDS);
            lines.add("{\"event\":\"started\",\"t\":" + System.currentTimeMillis() + ",\"rate\":" + rate + "}");
            while (true) {
                String line = lines.poll(200, TimeUnit.MILLISECONDS);
                if (line == null) {
                    writer.flush();
                    continue;
                }
                writer.write(line);
                writer.newLine();
                while ((line = lines.poll()) != null) {
                    writer.write(line);
                    writer.newLine();
                }
                writer.flush();
            }
        }

        private void call() {
            long started = System.currentTimeMillis();
            long t0 = System.nanoTime();
            CHOSEN.remove();
            Integer status = null;
            String error = null;
            try {
                status = rest.getForEntity(url, Map.class).getStatusCode().value();
            } catch (HttpStatusCodeException e) {
                status = e.getStatusCode().value();
            } catch (ResourceAccessException e) {
                Throwable cause = e.getCause() != null ? e.getCause() : e;
                if (cause instanceof ConnectException) {
                    error = "ConnectException";
                } else if (cause instanceof SocketTimeoutException) {
                    error = "SocketTimeoutException";
                } else {
                    error = cause.getClass().getSimpleName();
                }
            } catch (IllegalStateException e) {
                error = "NoInstance";
            } catch (RuntimeException e) {
                error = e.getClass().getSimpleName();
            }
            ServiceInstance chosen = CHOSEN.get();
            CHOSEN.remove();
            long millis = (System.nanoTime() - t0) / 1_000_000L;
            record(started, millis, status, error,
                    chosen == null ? null : chosen.getHost(), chosen == null ? null : chosen.getPort());
        }

        private void record(long started, long millis, Integer status, String error, String host, Integer port) {
            StringBuilder b = new StringBuilder(128);
            b.append("{\"seq\":").append(seq.incrementAndGet())
                    .append(",\"t\":").append(started)
                    .append(",\"ms\":").append(millis)
                    .append(",\"status\":").append(status == null ? "null" : status.toString())
                    .append(",\"error\":").append(error == null ? "null" : "\"" + error + "\"")
                    .append(",\"host\":").append(host == null ? "null" : "\"" + host + "\"")
                    .append(",\"port\":").append(port == null ? "null" : port.toString())
                    .append('}');
            if (!lines.offer(b.toString())) {
                System.err.println("consumer: result queue full, a result was dropped");
            }
        }
    }
}
