//go:build !race

package cluster_test

// raceBuild is empty: the tests are not race-enabled.
var raceBuild []string
