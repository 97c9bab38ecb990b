package infer_test

import (
	"math"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/internal/testenv"
)

func TestSoftmax(t *testing.T) {
	t.Parallel()
	inf := float32(math.Inf(1))
	tests := []struct {
		name   string
		logits []float32
		want   []float64
	}{
		{"one", []float32{3}, []float64{1}},
		{"equal", []float32{2, 2, 2, 2}, []float64{0.25, 0.25, 0.25, 0.25}},
		{"two", []float32{0, float32(math.Log(3))}, []float64{0.25, 0.75}},
		{"shift invariant", []float32{1000, 1000 + float32(math.Log(3))}, []float64{0.25, 0.75}},
		{"large logits do not overflow", []float32{1e30, 0, -1e30}, []float64{1, 0, 0}},
		{"very negative", []float32{-1e30, -1e30}, []float64{0.5, 0.5}},
		{"all -Inf", []float32{-inf, -inf}, []float64{0.5, 0.5}},
		{"+Inf takes all", []float32{inf, 5, inf}, []float64{0.5, 0, 0.5}},
		{"empty", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := make([]float64, len(tt.logits))
			infer.Softmax(tt.logits, got)
			sum := 0.0
			for i := range got {
				sum += got[i]
				if math.Abs(got[i]-tt.want[i]) > 1e-5 {
					t.Fatalf("Softmax(%v) = %v, want %v", tt.logits, got, tt.want)
				}
			}
			if len(got) > 0 && math.Abs(sum-1) > 1e-9 {
				t.Errorf("sum = %v, want 1", sum)
			}
		})
	}
}

func TestSoftmaxNaN(t *testing.T) {
	t.Parallel()
	got := make([]float64, 3)
	infer.Softmax([]float32{1, float32(math.NaN()), 2}, got)
	for _, p := range got {
		if !math.IsNaN(p) {
			t.Fatalf("Softmax with a NaN logit = %v, want NaN", got)
		}
	}
}

func TestTopK(t *testing.T) {
	t.Parallel()
	labels := []string{"a", "b", "c", "d", "e"}
	nan := math.NaN()
	tests := []struct {
		name  string
		probs []float64
		k     int
		want  []infer.Prediction
	}{
		{"top 2", []float64{0.1, 0.5, 0.05, 0.3, 0.05}, 2,
			[]infer.Prediction{{"b", 1, 0.5}, {"d", 3, 0.3}}},
		{"ties by index", []float64{0.2, 0.2, 0.2, 0.2, 0.2}, 3,
			[]infer.Prediction{{"a", 0, 0.2}, {"b", 1, 0.2}, {"c", 2, 0.2}}},
		{"k clamped up to 1", []float64{0.1, 0.9}, 0,
			[]infer.Prediction{{"b", 1, 0.9}}},
		{"k clamped down to len", []float64{0.25, 0.75}, 10,
			[]infer.Prediction{{"b", 1, 0.75}, {"a", 0, 0.25}}},
		{"rounded to 4 places", []float64{0.123456, 0.876544}, 2,
			[]infer.Prediction{{"b", 1, 0.8765}, {"a", 0, 0.1235}}},
		{"equal after rounding: by index", []float64{0.00001, 0.99996, 0.00003}, 3,
			[]infer.Prediction{{"b", 1, 1}, {"a", 0, 0}, {"c", 2, 0}}},
		{"NaN last", []float64{nan, 0.4, nan, 0.6}, 4,
			[]infer.Prediction{{"d", 3, 0.6}, {"b", 1, 0.4}, {"a", 0, 0}, {"c", 2, 0}}},
		{"missing labels are empty", []float64{0, 0, 0, 0, 0, 0, 1}, 1,
			[]infer.Prediction{{"", 6, 1}}},
		{"empty", nil, 5, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := infer.TopK(tt.probs, labels, tt.k)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("TopK(%v, %d) = %v, want %v", tt.probs, tt.k, got, tt.want)
			}
		})
	}
}

// TestTopKMatchesSort checks the selection against a full sort on many classes.
func TestTopKMatchesSort(t *testing.T) {
	t.Parallel()
	probs := make([]float64, 1000)
	for i := range probs {
		probs[i] = float64((i*7919)%1000) / 1000 // a permutation, with no ties
	}
	got := infer.TopK(probs, nil, 20)
	for i, p := range got {
		if want := 999 - i; int(math.Round(p.Confidence*1000)) != want || probs[p.Index] != p.Confidence {
			t.Fatalf("prediction %d = %v, want probability %d/1000", i, p, want)
		}
	}
}

func TestLoadLabels(t *testing.T) {
	t.Parallel()
	labels, err := infer.LoadLabels(testenv.Labels(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(labels) != 1000 || labels[0] != "tench, Tinca tinca" || labels[249] != "malamute, malemute, Alaskan malamute" {
		t.Errorf("got %d labels, [0] = %q, [249] = %q", len(labels), labels[0], labels[249])
	}

	dir := t.TempDir()
	tests := []struct {
		name, content string
		want          []string // nil: an error
	}{
		{"crlf, bom and trailing blank lines", "\xef\xbb\xbfcat\r\ndog\r\n\r\n\n", []string{"cat", "dog"}},
		{"no final newline", "cat\ndog", []string{"cat", "dog"}},
		{"blank line inside", "cat\n\ndog\n", nil},
		{"empty", "\n\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, tt.name)
			if err := os.WriteFile(path, []byte(tt.content), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := infer.LoadLabels(path)
			if tt.want == nil {
				if err == nil {
					t.Fatalf("LoadLabels = %q, want an error", got)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("LoadLabels = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	if _, err := infer.LoadLabels(filepath.Join(dir, "missing")); err == nil {
		t.Error("LoadLabels of a missing file: no error")
	}
}
