package cluster

import (
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// TestNotices: a loss of the connection is told at once and its end told;
// a loss that lasts is told again every remindEvery; a connection that
// comes and goes is told at most once per noticeGap; a loss that ended
// before it was told is not told.
func TestNotices(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 22, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	type look struct {
		now   time.Duration // since t0
		since time.Duration // the connection is lost since then; -1: up
		want  notice
	}
	tests := []struct {
		name  string
		looks []look
	}{
		{"up", []look{{0, -1, noticeNone}, {time.Second, -1, noticeNone}}},
		{"lost and back", []look{
			{0, -1, noticeNone},
			{time.Second, 0, noticeLost},
			{2 * time.Second, 0, noticeNone},
			{3 * time.Second, -1, noticeBack},
			{4 * time.Second, -1, noticeNone},
		}},
		{"a long loss is told again", []look{
			{time.Second, 0, noticeLost},
			{remindEvery, 0, noticeNone},
			{remindEvery + time.Second, 0, noticeStill},
			{remindEvery + 2*time.Second, 0, noticeNone},
			{2*remindEvery + time.Second, 0, noticeStill},
			{2*remindEvery + 3*time.Second, -1, noticeBack},
		}},
		{"flapping", []look{
			{time.Second, 0, noticeLost},
			{2 * time.Second, -1, noticeBack},
			{3 * time.Second, 3 * time.Second, noticeNone}, // within noticeGap of the return told
			{4 * time.Second, -1, noticeNone},              // its end untold too
			{5 * time.Second, 5 * time.Second, noticeNone},
			{2*time.Second + noticeGap, 5 * time.Second, noticeLost}, // it lasted: told
			{3*time.Second + noticeGap, -1, noticeBack},
		}},
		{"lost again between two looks", []look{
			{time.Second, 0, noticeLost},
			{2 * time.Second, 2 * time.Second, noticeNone}, // back and lost meanwhile: the same wait
			{3 * time.Second, -1, noticeBack},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var n notices
			for _, l := range tt.looks {
				since := time.Time{}
				if l.since >= 0 {
					since = at(l.since)
				}
				if got := n.next(at(l.now), since); got != l.want {
					t.Errorf("next(%v, lost since %v) = %d, want %d", l.now, l.since, got, l.want)
				}
			}
		})
	}
}

// TestNoServer: the errors of connecting that mean no server answers at
// the URL, for which an agent waits and tries again, include a host name
// that does not resolve (yet): an agent started beside its server in a
// compose file or a StatefulSet, whose name resolves once it runs, exited
// at once.
func TestNoServer(t *testing.T) {
	dns := fmt.Errorf("dial tcp: %w", &net.DNSError{Err: "no such host", Name: "queue", IsNotFound: true})
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{dns, true},
		{fmt.Errorf("connecting: %w", nats.ErrNoServers), true},
		{errors.New("nats: authorization violation"), false},
	} {
		if got := noServer(tt.err); got != tt.want {
			t.Errorf("noServer(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}
