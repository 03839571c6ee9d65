package pool_test

import (
	"testing"

	"github.com/safepool/safepool/pool"
)

// TestCountEnded: a result adds to the count of its terminal state, once,
// or once per item of a batch.
func TestCountEnded(t *testing.T) {
	var st pool.Stats
	for _, r := range []pool.Result{
		{State: pool.Done}, {State: pool.Failed}, {State: pool.Poison}, {State: pool.Cancelled},
		{State: pool.Done, Items: make([]pool.Item, 3)},
	} {
		st.CountEnded(&r)
	}
	if st.Done != 4 || st.Failed != 1 || st.Poison != 1 || st.Cancelled != 1 {
		t.Errorf("CountEnded: done %d failed %d poison %d cancelled %d, want 4 1 1 1", st.Done, st.Failed, st.Poison, st.Cancelled)
	}
}
