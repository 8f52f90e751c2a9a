// Systerns lab daemon (Go): a small long-running service recorded as a benign
// hard negative. Container daemons (dockerd, containerd, their shims) are Go
// programs that stay up for days with many threads and few syscalls; a miner
// detector must not read that shape as mining.
//
// It serves files of one folder on 127.0.0.1, checks the folder on a timer,
// hands changed files to a pool of goroutines that read (and optionally hash)
// them, and appends log lines.
//
// Usage: labd -port N -dir DIR -log FILE [-procs N] [-workers N] [-tick D] [-hash]
// (-tick 0: the folder is never checked; the service only waits for requests)
package main

import (
	"crypto/sha256"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"
)

func main() {
	port := flag.Int("port", 0, "port on 127.0.0.1")
	dir := flag.String("dir", ".", "folder served and watched")
	logPath := flag.String("log", "labd.log", "log file")
	procs := flag.Int("procs", 2, "GOMAXPROCS")
	workers := flag.Int("workers", 4, "goroutines reading changed files")
	tick := flag.Duration("tick", time.Second, "how often the folder is checked (0: never)")
	hash := flag.Bool("hash", false, "hash what is read")
	flag.Parse()
	runtime.GOMAXPROCS(*procs)

	logf, err := os.OpenFile(*logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var mu sync.Mutex
	logLine := func(format string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(logf, "%s "+format+"\n", append([]any{time.Now().Format(time.RFC3339Nano)}, a...)...)
	}
	digest := func(data []byte) string {
		if !*hash {
			return ""
		}
		sum := sha256.Sum256(data)
		return fmt.Sprintf("%x", sum[:8])
	}

	jobs := make(chan string, 64)
	for i := 0; i < *workers; i++ {
		go func(id int) {
			for path := range jobs {
				data, err := os.ReadFile(path)
				if err != nil {
					logLine("worker=%d error=%q", id, err.Error())
					continue
				}
				logLine("worker=%d file=%s bytes=%d sum=%s", id, filepath.Base(path), len(data), digest(data))
			}
		}(i)
	}
	go func() {
		if *tick <= 0 {
			return
		}
		seen := map[string]time.Time{}
		for range time.Tick(*tick) {
			entries, err := os.ReadDir(*dir)
			if err != nil {
				continue
			}
			for _, e := range entries {
				info, err := e.Info()
				if err != nil || info.IsDir() || info.ModTime().Equal(seen[e.Name()]) {
					continue
				}
				seen[e.Name()] = info.ModTime()
				select {
				case jobs <- filepath.Join(*dir, e.Name()):
				default:
				}
			}
			logLine("tick files=%d goroutines=%d", len(entries), runtime.NumGoroutine())
		}
	}()

	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		data, err := os.ReadFile(filepath.Join(*dir, filepath.Base(r.URL.Path)))
		if err != nil {
			http.NotFound(w, r)
			return
		}
		if sum := digest(data); sum != "" {
			w.Header().Set("X-Sum", sum)
		}
		w.Write(data)
		logLine("get path=%s bytes=%d", r.URL.Path, len(data))
	})
	srv := &http.Server{Addr: fmt.Sprintf("127.0.0.1:%d", *port), ReadTimeout: 5 * time.Second}
	if err := srv.ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
