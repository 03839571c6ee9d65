package cluster_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// startConfigured starts a NATS server, in this process, from the
// configuration conf (with %s for its store directory), on a free loopback
// port, and returns its port.
func startConfigured(t *testing.T, conf string) int {
	t.Helper()
	dir := t.TempDir()
	port := freePort(t)
	file := filepath.Join(dir, "nats.conf")
	body := fmt.Sprintf("listen: 127.0.0.1:%d\n", port) + strings.ReplaceAll(conf, "%s", filepath.Join(dir, "store"))
	if err := os.WriteFile(file, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(file)
	if err != nil {
		t.Fatal(err)
	}
	opts.NoSigs, opts.NoLog = true, true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		t.Fatal("the NATS server did not start")
	}
	t.Cleanup(s.Shutdown)
	return port
}

// TestNoJetStream: an agent or a submitter pointed at a NATS deployment
// that does not give its user JetStream says so at once, and why, with
// exit status 2: the server runs without JetStream (nats-server's
// default), the user's account has it disabled, or the user may not use
// its API. They tried again for 30 s, silently, and then said only "no
// responders available for request", or "context deadline exceeded"
// after the NATS client had printed the permissions violation on its own.
func TestNoJetStream(t *testing.T) {
	t.Parallel()
	plain := startConfigured(t, "")
	accounts := startConfigured(t, `jetstream { store_dir: "%s" }
accounts {
  JS: { jetstream: enabled, users: [
    {user: ok, password: pw},
    {user: limited, password: pw, permissions: {publish: ["_INBOX.>"], subscribe: ">"}}
  ] }
  PLAIN: { users: [ {user: plain, password: pw} ] }
}
`)
	for _, tc := range []struct {
		name, url, says string
	}{
		{"server", fmt.Sprintf("nats://127.0.0.1:%d", plain), "the NATS server runs without JetStream (start nats-server with -js"},
		{"account", fmt.Sprintf("nats://plain:pw@127.0.0.1:%d", accounts), "no JetStream for this user's account"},
		{"permissions", fmt.Sprintf("nats://limited:pw@127.0.0.1:%d", accounts), `no JetStream for this user: nats: permissions violation: Permissions Violation for Publish to "$JS.API.`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, args := range [][]string{
				{"agent", "--nats", tc.url, "--name", "a1"},
				{"run", "--nats", tc.url, "echo", ":::", "x"},
			} {
				p := start(t, dir, args[0], args...)
				began := time.Now()
				if st := p.wait(t, 20*time.Second); st != 2 {
					t.Errorf("%s exited %d, want 2:\n%s", args[0], st, p.stderr())
				}
				if took := time.Since(began); took > 10*time.Second {
					t.Errorf("%s took %v to give up, want less than 10 s", args[0], took.Round(100*time.Millisecond))
				}
				if !strings.Contains(p.stderr(), tc.says) {
					t.Errorf("%s's stderr does not say %q:\n%s", args[0], tc.says, p.stderr())
				}
				if strings.Contains(p.stderr(), ":pw@") {
					t.Errorf("%s's stderr shows the password:\n%s", args[0], p.stderr())
				}
			}
		})
	}
	// A user whose account has JetStream sets up and runs.
	dir := t.TempDir()
	url := fmt.Sprintf("nats://ok:pw@127.0.0.1:%d", accounts)
	startAgent(t, dir, "a1", url)
	sub := submit(t, dir, "run", url, []string{"sleep:10"})
	if st := sub.wait(t, 60*time.Second); st != 0 {
		t.Fatalf("run exited %d, want 0:\n%s", st, sub.stderr())
	}
}
