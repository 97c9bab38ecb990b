// Package sse reads server-sent events (text/event-stream), for the project's own
// clients: the load generator and the chaos run. It is a reader of the subset the
// server writes, not a general EventSource.
package sse

import (
	"bufio"
	"io"
	"strings"
)

// Event is one server-sent event. Data joins the event's data lines with "\n"; it is
// nil when the event had no data line.
type Event struct {
	Name, ID string
	Data     []byte
}

// Read reads the next event that has a name or data, skipping comment lines (the
// server's keepalives) and empty events. A stream that ends, even between events,
// gives io.ErrUnexpectedEOF: the server's streams end with an event of their own.
func Read(rd *bufio.Reader) (Event, error) {
	var ev Event
	for {
		line, err := rd.ReadString('\n')
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return ev, err
		}
		line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
		if line == "" {
			if ev.Name != "" || ev.Data != nil {
				return ev, nil
			}
			continue
		}
		if strings.HasPrefix(line, ":") {
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "event":
			ev.Name = value
		case "id":
			ev.ID = value
		case "data":
			if ev.Data != nil {
				ev.Data = append(ev.Data, '\n')
			}
			ev.Data = append(ev.Data, value...)
			if ev.Data == nil {
				ev.Data = []byte{}
			}
		}
	}
}
