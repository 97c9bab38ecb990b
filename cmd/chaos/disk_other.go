//go:build !linux

package main

import "errors"

var errNoTmpfs = errors.New("the full-disk phase needs Linux (it mounts a tmpfs); skip it with --disk=false")

func canMount() error                      { return errNoTmpfs }
func mountTmpfs(dir string, mib int) error { return errNoTmpfs }
func unmount(dir string) error             { return errNoTmpfs }
func isNoSpace(err error) bool             { return false }
