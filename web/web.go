package web

import (
	"embed"
	"io/fs"
)

//go:embed demo api
var files embed.FS

// Demo returns the demo page's files, rooted at the folder holding index.html.
func Demo() fs.FS { return sub("demo") }

// API returns the API description: openapi.json and docs.html.
func API() fs.FS { return sub("api") }

func sub(dir string) fs.FS {
	f, err := fs.Sub(files, dir)
	if err != nil {
		panic(err) // the folder is embedded at build time; this cannot fail
	}
	return f
}
