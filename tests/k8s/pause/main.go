// Command pause is PID 1 of a pod sandbox in the tests' real nodes: the process that holds the
// pod's namespaces while its containers come and go. It does nothing but wait, with two duties
// that fall to any PID 1:
//
//   - Reap zombies. Orphaned processes of the pod are re-parented to PID 1; if it never waits
//     for them they stay as zombies in the process table. On every SIGCHLD it collects all
//     exited children.
//   - Exit promptly on SIGINT/SIGTERM. The kernel delivers no signal to PID 1 of a namespace
//     unless that process installed a handler, so a pause that ignores SIGTERM is only stopped
//     by the SIGKILL after the runtime's grace period, on every sandbox stop.
//
// Upstream's k8s.io/kubernetes/build/pause does the same in C; this one is a static Go binary
// (CGO_ENABLED=0) built by tests/k8s/tools, so no C toolchain or registry image is needed.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 8)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sig {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		reap()
	}
}

// reap collects every child that has exited. Signals coalesce (several children may exit
// behind one SIGCHLD), so it loops until no exited child is left.
func reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
	}
}
