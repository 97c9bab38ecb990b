package infer_test

import (
	"context"
	"errors"
	"fmt"
	"image"
	"log"
	"os"
	"runtime"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/infer/ort"
)

func ExampleSoftmax() {
	logits := []float32{1, 2, 3}
	probs := make([]float64, len(logits))
	infer.Softmax(logits, probs)
	fmt.Printf("%.4f\n", probs)
	// Output: [0.0900 0.2447 0.6652]
}

func ExampleTopK() {
	labels := []string{"cat", "dog", "fox", "owl"}
	probs := make([]float64, len(labels))
	infer.Softmax([]float32{0.5, 3, 1.2, 3}, probs)
	for _, p := range infer.TopK(probs, labels, 3) {
		fmt.Printf("%d %s %.4f\n", p.Index, p.Label, p.Confidence)
	}
	// Output:
	// 1 dog 0.4450
	// 3 owl 0.4450
	// 2 fox 0.0736
}

func ExampleDecode() {
	_, _, err := infer.Decode([]byte("plain text"), infer.Limits{})
	fmt.Println(errors.Is(err, infer.ErrInvalidImage))
	fmt.Println(err)
	// Output:
	// true
	// infer: invalid image: unsupported format (want JPEG, PNG, GIF or WebP)
}

func ExamplePreprocess_Fill() {
	// A 2x2 mid-grey image, into a 1x1 NCHW input with the ImageNet recipe.
	img := image.NewGray(image.Rect(0, 0, 2, 2))
	for i := range img.Pix {
		img.Pix[i] = 128
	}
	dst := make([]float32, 3*1*1)
	infer.Preprocess{}.Fill(dst, img, infer.NCHW, 1, 1)
	fmt.Printf("%.3f\n", dst)
	// Output: [0.074 0.205 0.426]
}

// Example wires a classifier to ONNX Runtime: one single-threaded session per
// CPU, the shape that gives the most images per second on a small model.
func Example() {
	if err := ort.Init("third_party/onnxruntime/lib/libonnxruntime.so.1.24.1"); err != nil {
		log.Fatal(err)
	}
	defer ort.Destroy()
	model := "assets/models/mobilenetv2-12-int8.onnx"
	sessions, err := ort.OpenPool(model, runtime.NumCPU(), ort.Options{IntraOpThreads: 1})
	if err != nil {
		log.Fatal(err)
	}
	labels, err := infer.LoadLabels("assets/labels/imagenet_classes.txt")
	if err != nil {
		log.Fatal(err)
	}
	c, err := infer.New(sessions, labels, infer.Options{Name: "mobilenetv2-12-int8"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	photo, err := os.ReadFile("assets/images/dog.jpg")
	if err != nil {
		log.Fatal(err)
	}
	res, err := c.Classify(context.Background(), photo, 3)
	switch {
	case errors.Is(err, infer.ErrInvalidImage), errors.Is(err, infer.ErrTooLarge):
		log.Printf("bad image: %v", err) // a client error: 400 or 413
	case errors.Is(err, infer.ErrOverloaded):
		log.Print("busy, retry later") // 503 with Retry-After
	case err != nil:
		log.Fatal(err)
	default:
		for _, p := range res.Predictions {
			fmt.Printf("%d %s %.4f\n", p.Index, p.Label, p.Confidence)
		}
	}
}
