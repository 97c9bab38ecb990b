package main

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// canMount says what is missing for the full-disk phase: it mounts a tmpfs, which
// takes root (CAP_SYS_ADMIN).
func canMount() error {
	if os.Geteuid() != 0 {
		return errors.New("the full-disk phase mounts a tmpfs and needs root: run it as root (sudo make chaos), or skip it with --disk=false (make chaos CHAOS_DISK=0)")
	}
	return nil
}

// mountTmpfs mounts a tmpfs of mib MiB, private to its owner, on dir.
func mountTmpfs(dir string, mib int) error {
	opts := fmt.Sprintf("size=%dm,mode=0700", mib)
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, opts); err != nil {
		return fmt.Errorf("mount -t tmpfs -o %s tmpfs %s: %w", opts, dir, err)
	}
	return nil
}

// unmount unmounts dir, lazily if something still holds it.
func unmount(dir string) error {
	if err := syscall.Unmount(dir, 0); err != nil {
		return syscall.Unmount(dir, syscall.MNT_DETACH)
	}
	return nil
}

// isNoSpace reports whether err is "no space left on device".
func isNoSpace(err error) bool { return errors.Is(err, syscall.ENOSPC) }
