// Package testenv finds the files that tests share: the ONNX Runtime library, the
// models, the labels and the sample photos installed by scripts/setup.sh.
//
// A test that needs one of them fails with a message saying how to install it; it never
// skips, so a missing dependency cannot hide behind a green run.
package testenv

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// Root returns the repository root: the folder holding go.mod.
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Path returns the absolute path of rel below the repository root.
func Path(rel string) string { return filepath.Join(Root(), rel) }

func need(t testing.TB, env, rel string) string {
	t.Helper()
	p := os.Getenv(env)
	if p == "" {
		p = Path(rel)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("test asset %s is missing (%v): run `make setup` (scripts/setup.sh), which copies it from ../shared/assets or downloads it", p, err)
	}
	return p
}

// ORTLib returns the ONNX Runtime shared library ($INFERGATE_ORT_LIB overrides).
func ORTLib(t testing.TB) string {
	return need(t, "INFERGATE_ORT_LIB", "third_party/onnxruntime/lib/libonnxruntime.so.1.24.1")
}

// Model returns the default model, MobileNetV2 int8.
func Model(t testing.TB) string {
	return need(t, "INFERGATE_MODEL", "assets/models/mobilenetv2-12-int8.onnx")
}

// ResNet returns the ResNet-18-sized model with random weights (speed only).
func ResNet(t testing.TB) string {
	return need(t, "", "assets/models/resnet18-untrained.onnx")
}

// Labels returns the ImageNet class names file.
func Labels(t testing.TB) string {
	return need(t, "INFERGATE_LABELS", "assets/labels/imagenet_classes.txt")
}

// Image returns a sample photo by name, such as "dog.jpg".
func Image(t testing.TB, name string) string {
	return need(t, "", filepath.Join("assets/images", name))
}

// ReadImage returns the bytes of a sample photo.
func ReadImage(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(Image(t, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// PNGHeader returns a PNG with a signature, an IHDR chunk declaring w x h 8-bit RGB
// pixels (with a correct CRC), and IEND: enough for
// image.DecodeConfig, with no pixel data. Decoding it for real would need w*h*4
// bytes, which is what the pixel-limit tests rely on never happening.
func PNGHeader(w, h uint32) []byte {
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	chunk := func(typ string, data []byte) { writeChunk(&b, typ, data) }
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], w)
	binary.BigEndian.PutUint32(ihdr[4:], h)
	ihdr[8] = 8 // bit depth
	ihdr[9] = 2 // colour type: truecolour
	chunk("IHDR", ihdr)
	chunk("IEND", nil)
	return b.Bytes()
}

// writeChunk appends one PNG chunk (length, type, data, CRC) to b.
func writeChunk(b *bytes.Buffer, typ string, data []byte) {
	binary.Write(b, binary.BigEndian, uint32(len(data)))
	crc := crc32.NewIEEE()
	crc.Write([]byte(typ))
	crc.Write(data)
	b.WriteString(typ)
	b.Write(data)
	binary.Write(b, binary.BigEndian, crc.Sum32())
}

// DatabaseBytes returns the bytes of the SQLite database at path and of its
// companion files (-wal, -shm, -journal) end to end, for tests that check what is
// and is not stored at rest.
func DatabaseBytes(t testing.TB, path string) []byte {
	t.Helper()
	files, err := filepath.Glob(path + "*")
	if err != nil {
		t.Fatal(err)
	}
	var all []byte
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, data...)
	}
	return all
}
