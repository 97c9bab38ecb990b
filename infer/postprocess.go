package infer

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
)

// Softmax writes the softmax of logits to dst, which must be at least as long. It
// subtracts the largest logit first, so large logits do not overflow. A NaN logit
// makes every probability NaN.
func Softmax(logits []float32, dst []float64) {
	if len(logits) == 0 {
		return
	}
	dst = dst[:len(logits)]
	hi := float64(logits[0])
	for _, v := range logits[1:] {
		if float64(v) > hi {
			hi = float64(v)
		}
	}
	if math.IsInf(hi, -1) {
		// Every logit is -Inf: all equally (un)likely.
		for i := range dst {
			dst[i] = 1 / float64(len(dst))
		}
		return
	}
	if math.IsInf(hi, 1) {
		// Every +Inf logit shares the mass; the others get none.
		n := 0
		for _, v := range logits {
			if math.IsInf(float64(v), 1) {
				n++
			}
		}
		for i, v := range logits {
			dst[i] = 0
			if math.IsInf(float64(v), 1) {
				dst[i] = 1 / float64(n)
			}
		}
		return
	}
	var sum float64
	for i, v := range logits {
		e := math.Exp(float64(v) - hi)
		dst[i] = e
		sum += e
	}
	inv := 1 / sum
	for i := range dst {
		dst[i] *= inv
	}
}

// TopK returns the k most probable classes, sorted by confidence, highest first,
// ties by index. k is clamped to [1, len(probs)]; an empty probs gives nil. The
// label of index i is labels[i], or "" when labels is shorter. Confidence is
// rounded to 4 decimal places; NaN probabilities rank last and are reported as 0.
func TopK(probs []float64, labels []string, k int) []Prediction {
	if len(probs) == 0 {
		return nil
	}
	k = min(max(k, 1), len(probs))
	// Insertion into a sorted top list: k is small (at most 20 in the API), so this
	// beats sorting all classes.
	top := make([]int, 0, k)
	for i, p := range probs {
		if len(top) == k && !better(p, i, probs[top[k-1]], top[k-1]) {
			continue
		}
		j := len(top)
		if j == k {
			j--
		} else {
			top = append(top, 0)
		}
		for j > 0 && better(p, i, probs[top[j-1]], top[j-1]) {
			top[j] = top[j-1]
			j--
		}
		top[j] = i
	}
	out := make([]Prediction, len(top))
	for n, i := range top {
		out[n] = Prediction{Index: i, Confidence: round4(probs[i])}
		if i < len(labels) {
			out[n].Label = labels[i]
		}
	}
	// Rounding can make a lower probability equal to a higher one: order equal
	// rounded values by index, as the contract says.
	slices.SortStableFunc(out, func(a, b Prediction) int {
		if a.Confidence != b.Confidence {
			if a.Confidence > b.Confidence {
				return -1
			}
			return 1
		}
		return a.Index - b.Index
	})
	return out
}

// better reports whether probability p at index i ranks above q at index j.
func better(p float64, i int, q float64, j int) bool {
	switch {
	case p != p:
		return false // NaN last; between NaNs the earlier index wins
	case q != q:
		return true
	case p != q:
		return p > q
	}
	return i < j
}

func round4(p float64) float64 {
	if p != p {
		return 0
	}
	return math.Round(p*1e4) / 1e4
}

// LoadLabels reads class names, one a line, line 1 being class 0. Trailing blank
// lines, "\r" line ends and a UTF-8 byte order mark are ignored; a blank line
// inside the file is an error, since it would shift every later class.
func LoadLabels(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load labels: %w", err)
	}
	b = bytes.TrimPrefix(b, []byte("\xef\xbb\xbf"))
	lines := strings.Split(strings.ReplaceAll(string(b), "\r\n", "\n"), "\n")
	for len(lines) > 0 && strings.TrimSpace(lines[len(lines)-1]) == "" {
		lines = lines[:len(lines)-1]
	}
	if len(lines) == 0 {
		return nil, fmt.Errorf("load labels: %s has no labels", path)
	}
	for i, l := range lines {
		l = strings.TrimSpace(l)
		if l == "" {
			return nil, fmt.Errorf("load labels: %s: line %d is blank", path, i+1)
		}
		lines[i] = l
	}
	return lines, nil
}
