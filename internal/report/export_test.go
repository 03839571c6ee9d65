package report

// SetScans makes the samples be read in n parts at once whenever the
// table has minRows rows a part; it returns what puts the defaults back.
func SetScans(n int, minRows int64) (restore func()) {
	oldScans, oldMin := scans, minScanRows
	scans, minScanRows = func() int { return n }, minRows
	return func() { scans, minScanRows = oldScans, oldMin }
}
