// Systerns lab daemon (Java): a long-running service on a thread pool and a
// scheduled ticker, recorded as a benign hard negative (JVM services keep
// dozens of threads that mostly wait).
//
// It serves files of one folder on 127.0.0.1, checks the folder on a timer,
// has the pool read and hash changed files, and appends log lines.
//
// Usage: java Labd.java DIR LOGFILE TICK_MS THREADS PORT   (TICK_MS 0: no ticker)
import com.sun.net.httpserver.HttpServer;
import java.io.FileWriter;
import java.io.IOException;
import java.io.OutputStream;
import java.io.PrintWriter;
import java.net.InetSocketAddress;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.security.MessageDigest;
import java.time.Instant;
import java.util.HexFormat;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;

public class Labd {
    static PrintWriter log;

    static synchronized void logLine(String line) {
        log.println(Instant.now() + " " + line);
    }

    static void digest(Path file) {
        try {
            byte[] data = Files.readAllBytes(file);
            byte[] sum = MessageDigest.getInstance("SHA-256").digest(data);
            logLine("file=" + file.getFileName() + " sum=" + HexFormat.of().formatHex(sum, 0, 8));
        } catch (Exception e) {
            logLine("error=" + e);
        }
    }

    public static void main(String[] args) throws Exception {
        Path dir = Paths.get(args[0]);
        log = new PrintWriter(new FileWriter(args[1], true), true);
        long tickMs = Long.parseLong(args[2]);
        ExecutorService pool = Executors.newFixedThreadPool(Integer.parseInt(args[3]));
        int port = Integer.parseInt(args[4]);
        Map<Path, Long> seen = new ConcurrentHashMap<>();
        ScheduledExecutorService ticker = Executors.newSingleThreadScheduledExecutor();
        if (tickMs > 0) ticker.scheduleAtFixedRate(() -> {
            int n = 0;
            try (DirectoryStream<Path> files = Files.newDirectoryStream(dir)) {
                for (Path p : files) {
                    n++;
                    if (!Files.isRegularFile(p)) continue;
                    long mtime = Files.getLastModifiedTime(p).toMillis();
                    Long old = seen.put(p, mtime);
                    if (old == null || old != mtime) pool.submit(() -> digest(p));
                }
            } catch (IOException e) {
                logLine("tick error=" + e);
            }
            logLine("tick files=" + n);
        }, 0, tickMs, TimeUnit.MILLISECONDS);
        HttpServer srv = HttpServer.create(new InetSocketAddress("127.0.0.1", port), 16);
        srv.setExecutor(pool);
        srv.createContext("/", ex -> {
            Path name = Paths.get(ex.getRequestURI().getPath()).getFileName();
            Path file = name == null ? null : dir.resolve(name.toString());
            if (file == null || !Files.isRegularFile(file)) {
                ex.sendResponseHeaders(404, -1);
                ex.close();
                return;
            }
            byte[] data = Files.readAllBytes(file);
            ex.sendResponseHeaders(200, data.length);
            try (OutputStream out = ex.getResponseBody()) {
                out.write(data);
            }
            logLine("get path=" + ex.getRequestURI().getPath() + " bytes=" + data.length);
        });
        srv.start();
    }
}
