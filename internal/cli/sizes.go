package cli

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// sizeUnits maps a unit suffix to its multiplier. K, M, G and T are binary
// multiples like KiB, MiB, GiB and TiB, as in ulimit and GNU parallel;
// kB, MB, GB and TB are SI multiples of 1000.
var sizeUnits = map[string]float64{
	"":    1,
	"b":   1,
	"k":   1 << 10,
	"kib": 1 << 10,
	"m":   1 << 20,
	"mib": 1 << 20,
	"g":   1 << 30,
	"gib": 1 << 30,
	"t":   1 << 40,
	"tib": 1 << 40,
	"kb":  1e3,
	"mb":  1e6,
	"gb":  1e9,
	"tb":  1e12,
}

// sizeError says why a size does not parse.
type sizeError struct {
	Input string // the size as given
	Why   string // what is wrong with it
}

func (e *sizeError) Error() string { return fmt.Sprintf("size %q: %s", e.Input, e.Why) }

// parseSize parses a byte count such as "512MiB", "1.5G", "800K" or "4096".
// Units are case-insensitive. Zero is allowed; negative sizes are not.
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	if num == "" {
		return 0, &sizeError{s, "want a number with an optional unit, such as 512MiB"}
	}
	mult, ok := sizeUnits[unit]
	if !ok {
		return 0, &sizeError{s, fmt.Sprintf("unknown unit %q (want B, K, M, G, T, KiB, MiB, GiB, TiB, kB, MB, GB or TB)", t[i:])}
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, &sizeError{s, fmt.Sprintf("bad number %q", num)}
	}
	v := f * mult
	if v >= math.MaxInt64 {
		return 0, &sizeError{s, "too large"}
	}
	return int64(math.Round(v)), nil
}

// formatSizeFlag renders n as a flag value: "256MiB" when n is a whole
// number of KiB, MiB, GiB or TiB, else plain bytes.
func formatSizeFlag(n int64) string {
	for _, u := range []struct {
		name string
		size int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.size && n%u.size == 0 {
			return strconv.FormatInt(n/u.size, 10) + u.name
		}
	}
	return strconv.FormatInt(n, 10)
}

// sizeValue is a pflag.Value holding a size in bytes.
type sizeValue struct {
	n   *int64
	set string // the text as given, for String
	// zeroErr, if not empty, refuses 0 with this reason.
	zeroErr string
	// least, if positive, refuses sizes from 1 to least-1.
	least int64
}

func newSizeValue(p *int64) *sizeValue { return &sizeValue{n: p} }

// nonZero makes v refuse 0, saying why.
func (v *sizeValue) nonZero(why string) *sizeValue {
	v.zeroErr = why
	return v
}

// atLeast makes v refuse sizes below n, other than 0 (see nonZero): a
// memory limit of a few bytes is a size given without its unit.
func (v *sizeValue) atLeast(n int64) *sizeValue {
	v.least = n
	return v
}

func (v *sizeValue) Set(s string) error {
	n, err := parseSize(s)
	if err != nil {
		// pflag wraps this as: invalid argument "x" for "--mem-limit" flag: ...
		var se *sizeError
		if errors.As(err, &se) {
			return errors.New(se.Why)
		}
		return err
	}
	if n == 0 && v.zeroErr != "" {
		return errors.New(v.zeroErr)
	}
	if n > 0 && n < v.least {
		return fmt.Errorf("below the least a worker needs, %s (a size without a unit is in bytes: 512MiB, 2G)", formatSizeFlag(v.least))
	}
	*v.n = n
	v.set = s
	return nil
}

func (v *sizeValue) String() string {
	if v.set != "" {
		return v.set
	}
	if v.n == nil || *v.n == 0 {
		return ""
	}
	return strconv.FormatInt(*v.n, 10)
}

func (v *sizeValue) Type() string { return "SIZE" }
