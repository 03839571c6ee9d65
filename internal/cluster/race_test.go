//go:build race

package cluster_test

// raceBuild makes the safepool binary the tests run race-enabled when the
// tests are, so that the race detector also watches the agents and
// submitters.
var raceBuild = []string{"-race"}
