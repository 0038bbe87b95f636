// Package main exists only so that this wrapper directory is a Go module;
// tools/k8s/build.sh builds the k8s.io/kubernetes/cmd/... binaries from it.
package main

func main() {}
