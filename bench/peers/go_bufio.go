// Peer: a Go echo server, one goroutine per connection, bufio reader and writer.
//
// The idiomatic Go shape: frames are cut with bufio.Reader (ReadSlice for lines,
// io.ReadFull for 4-byte big-endian length prefixes), written to a bufio.Writer,
// and flushed whenever the reader has nothing more buffered (so a pipelined
// read's frames go back in one write). Frames are limited to 1 MiB, like
// triodaemon in the suite. Built by bench/run.py with `go build`.
package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
)

const maxFrame = 1 << 20

func main() {
	tcp := flag.Int("tcp", 0, "listen on 127.0.0.1:PORT")
	unixPath := flag.String("unix", "", "listen on a Unix socket")
	framing := flag.String("framing", "line", "line or length")
	flag.Parse()
	var listener net.Listener
	var err error
	if *unixPath != "" {
		listener, err = net.Listen("unix", *unixPath)
	} else {
		listener, err = net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *tcp))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "go-bufio:", err)
		os.Exit(1)
	}
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-signals
		listener.Close() // also removes the Unix socket file
		os.Exit(0)
	}()
	fmt.Println("ready")
	line := *framing == "line"
	for {
		conn, err := listener.Accept()
		if err != nil {
			return
		}
		go serve(conn, line)
	}
}

func serve(conn net.Conn, line bool) {
	defer conn.Close()
	reader := bufio.NewReader(conn)
	writer := bufio.NewWriter(conn)
	header := make([]byte, 4)
	var payload []byte
	for {
		if line {
			frame, err := readLine(reader)
			if err != nil {
				return
			}
			writer.Write(frame)
		} else {
			if _, err := io.ReadFull(reader, header); err != nil {
				return
			}
			size := binary.BigEndian.Uint32(header)
			if size > maxFrame {
				return
			}
			if uint32(cap(payload)) < size {
				payload = make([]byte, size)
			}
			payload = payload[:size]
			if _, err := io.ReadFull(reader, payload); err != nil {
				return
			}
			writer.Write(header)
			writer.Write(payload)
		}
		if reader.Buffered() == 0 {
			if err := writer.Flush(); err != nil {
				return
			}
		}
	}
}

// readLine returns the next line with its '\n'; lines longer than the reader's
// buffer are collected piece by piece, up to maxFrame.
func readLine(reader *bufio.Reader) ([]byte, error) {
	frame, err := reader.ReadSlice('\n')
	if !errors.Is(err, bufio.ErrBufferFull) {
		return frame, err
	}
	long := append([]byte(nil), frame...)
	for errors.Is(err, bufio.ErrBufferFull) && len(long) <= maxFrame {
		frame, err = reader.ReadSlice('\n')
		long = append(long, frame...)
	}
	if err != nil {
		return nil, err
	}
	return long, nil
}
