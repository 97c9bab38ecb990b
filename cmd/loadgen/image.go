package main

import (
	"bytes"
	"fmt"
	"image"
	"image/jpeg"
	"net/http"
	"os"
	"strconv"
	"strings"

	_ "image/gif"
	_ "image/png"

	"golang.org/x/image/draw"
	_ "golang.org/x/image/webp"
)

// jpegQuality is the quality of re-encoded frames: what a camera app would send.
const jpegQuality = 90

// payload is the image every frame of a run carries.
type payload struct {
	path          string
	size          string // as asked: orig or WxH
	data          []byte
	contentType   string
	width, height int
}

// loadImage reads path and, unless size is "orig", scales it to exactly WxH (aspect
// ratio not kept) and re-encodes it as JPEG, so that runs can compare frame sizes
// with the same picture.
func loadImage(path, size string) (*payload, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	p := &payload{path: path, size: size}
	if size == "orig" {
		cfg, _, err := image.DecodeConfig(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", path, err)
		}
		p.data, p.width, p.height = data, cfg.Width, cfg.Height
		p.contentType = http.DetectContentType(data)
		if !strings.HasPrefix(p.contentType, "image/") {
			p.contentType = "application/octet-stream"
		}
		return p, nil
	}
	w, h, err := parseSize(size)
	if err != nil {
		return nil, err
	}
	src, _, err := image.Decode(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", path, err)
	}
	dst := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.CatmullRom.Scale(dst, dst.Bounds(), src, src.Bounds(), draw.Src, nil)
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, dst, &jpeg.Options{Quality: jpegQuality}); err != nil {
		return nil, fmt.Errorf("encode %s at %s: %w", path, size, err)
	}
	p.data, p.width, p.height, p.contentType = buf.Bytes(), w, h, "image/jpeg"
	return p, nil
}

// parseSize parses "WxH", each side 1 to 8192.
func parseSize(s string) (w, h int, err error) {
	ws, hs, ok := strings.Cut(strings.ToLower(s), "x")
	if ok {
		w, err = strconv.Atoi(ws)
		if err == nil {
			h, err = strconv.Atoi(hs)
		}
	}
	if !ok || err != nil || w < 1 || h < 1 || w > 8192 || h > 8192 {
		return 0, 0, fmt.Errorf("--size %q: want orig or WxH such as 224x224", s)
	}
	return w, h, nil
}
