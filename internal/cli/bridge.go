package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/safepool/safepool/internal/bridge"
)

// bridgeName is the hidden subcommand that the Python client starts: it
// speaks the bridge protocol of docs/protocol.md on two inherited
// descriptors. It is not part of the command-line interface.
const bridgeName = "__bridge"

// bridgeArgs are the flags of the bridge subcommand.
type bridgeArgs struct {
	inFD, outFD int // the client's pipes: frames in, frames out
}

// runBridge runs one bridge session. The session ends, and the workers are
// killed, when the client closes its pipe, when the client process exits (its
// pipe may be held open by a process it forked, so the parent pid is watched
// too), or on SIGINT, SIGTERM or SIGHUP. While the client process is
// stopped (Ctrl-Z), the pool is paused.
func runBridge(ctx context.Context, e *env, args []string) error {
	a := bridgeArgs{inFD: 3, outFD: 4}
	fs := newFlagSet(bridgeName)
	fs.IntVar(&a.inFD, "in-fd", a.inFD, "")
	fs.IntVar(&a.outFD, "out-fd", a.outFD, "")
	registerHelp(fs)
	if err := parseFlags(bridgeName, fs, args); err != nil {
		return err
	}
	// The pipes' ends are the bridge's alone (the client keeps the other
	// ends): made non-blocking, they are read and written through the
	// runtime's poller, so that a goroutine waiting on the client parks
	// instead of holding a thread in a system call, which the runtime's
	// monitor then polls every 20 µs to take its processor back.
	for _, fd := range []int{a.inFD, a.outFD} {
		_ = unix.SetNonblock(fd, true) // a descriptor that refuses stays blocking, and works
	}
	in := os.NewFile(uintptr(a.inFD), "bridge-in")
	out := os.NewFile(uintptr(a.outFD), "bridge-out")
	if in == nil || out == nil {
		return usagef(bridgeName, "bad descriptors %d and %d", a.inFD, a.outFD)
	}
	defer in.Close()
	defer out.Close()

	// The runtime checks once whether pidfds work before the first process
	// it starts, by forking a child; the workers' start waits for it. Run it
	// now, while the pool's configuration is read and its cgroups made.
	warmed := make(chan struct{})
	go func() { // owned by runBridge, which waits for it
		defer close(warmed)
		if p, err := os.FindProcess(os.Getpid()); err == nil {
			p.Release()
		}
	}()
	defer func() { <-warmed }()

	// The client is the bridge's parent process.
	client := os.Getppid()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go watchParent(ctx, cancel, client) // ends with ctx, which runBridge cancels on return
	// Its pool is paused while the client is stopped (Ctrl-Z), as every
	// process of a job stops.
	err := bridge.Serve(ctx, in, out, bridge.Options{Stdout: e.stdout, Stderr: e.stderr, SetProcs: true,
		Client: client})
	var told *bridge.ToldError
	switch {
	case errors.As(err, &told):
		// The client raises it: printed here too, its user would read it twice.
		return &statusError{status: exitFailed}
	case err != nil:
		return &statusError{status: exitFailed, err: err}
	}
	return nil
}

// errParentExited cancels a bridge whose parent process has exited.
var errParentExited = errors.New("the client process exited")

// watchParent cancels ctx when the process's parent is no longer ppid,
// that is when the client that started it has exited. Pdeathsig is not
// used: it fires when the client's thread that started the bridge ends,
// not its process.
func watchParent(ctx context.Context, cancel context.CancelCauseFunc, ppid int) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if os.Getppid() != ppid {
				cancel(fmt.Errorf("bridge: %w", errParentExited))
				return
			}
		}
	}
}
