package memory

import "os/exec"

// Spawner starts cmd, as readied by a group, on the calling thread and
// returns its process id. [StartCmd] is one; a caller may start the
// process without exec.Cmd's own machinery, as long as it keeps every
// field of cmd.SysProcAttr (the group's placement and the exec stop are
// there).
type Spawner func(cmd *exec.Cmd) (pid int, err error)

// StartCmd is the Spawner that calls cmd.Start.
func StartCmd(cmd *exec.Cmd) (int, error) {
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	return cmd.Process.Pid, nil
}
