// Peer: a Go echo server, one goroutine per connection, bufio reader and writer.
//
// The idiomatic Go shape, as written for speed: a bufio.Reader and a
// bufio.Writer per connection; frames are cut in place with ReadSlice (lines)
// or Peek (4-byte big-endian length prefixes), so a frame that fits the
// reader's buffer is never copied out of it, and written to the bufio.Writer, which
// is flushed only when the reader does not hold the whole next frame: all the
// frames of a pipelined read go back in one write, and no reply waits in the
// writer while the reader waits for more (flushing only when the reader holds
// nothing would keep the replies of a read that ends inside a frame until the
// rest of that frame came, which a client that waits for them never sends). No
// allocation per frame. Frames are limited to 1 MiB, like triodaemon in the suite.
//
// Sizes: bufio's defaults (4 KiB), matched to the load by the path a large frame
// takes: a frame larger than the reader's buffer (S4's 64 KiB) is read whole,
// prefix included, into one reusable buffer with io.ReadFull (bufio copies out
// only what it already holds and reads the rest straight into that buffer) and
// goes out in one Write, which bufio passes straight to the socket when the
// writer holds nothing. So no large frame is copied through a small buffer. A
// 128 KiB reader and 64 KiB writer, which cut S4's frames in place, did S4 no
// better and doubled the memory per idle connection (S5: 25 KiB against 12).
// Go's defaults are left as they are: TCP_NODELAY is on, and GOMAXPROCS is the
// number of CPUs the process may run on (one, pinned by bench/run.py). Built by
// bench/run.py with `go build`.
package main

import (
	"bufio"
	"bytes"
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
	echo := echoLines
	if *framing == "length" {
		echo = echoLength
	}
	for {
		conn, err := listener.Accept()
		if err != nil {
			return
		}
		go serve(conn, echo)
	}
}

func serve(conn net.Conn, echo func(*bufio.Reader, *bufio.Writer) error) {
	defer conn.Close()
	echo(bufio.NewReader(conn), bufio.NewWriter(conn))
}

// lineBuffered reports whether the reader holds the whole next line.
func lineBuffered(reader *bufio.Reader) bool {
	rest, _ := reader.Peek(reader.Buffered())
	return bytes.IndexByte(rest, '\n') >= 0
}

// frameBuffered reports whether the reader holds the whole next length-prefixed frame.
func frameBuffered(reader *bufio.Reader) bool {
	n := reader.Buffered()
	if n < 4 {
		return false
	}
	header, _ := reader.Peek(4)
	return n-4 >= int(binary.BigEndian.Uint32(header))
}

// echoLines echoes '\n'-terminated lines; a line longer than the reader's
// buffer is collected piece by piece into one reusable buffer, up to maxFrame.
func echoLines(reader *bufio.Reader, writer *bufio.Writer) error {
	var long []byte
	for {
		frame, err := reader.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			long = append(long[:0], frame...)
			for errors.Is(err, bufio.ErrBufferFull) && len(long) <= maxFrame {
				frame, err = reader.ReadSlice('\n')
				long = append(long, frame...)
			}
			frame = long
		}
		if err != nil {
			return err
		}
		writer.Write(frame)
		if !lineBuffered(reader) {
			if err := writer.Flush(); err != nil {
				return err
			}
		}
	}
}

// echoLength echoes frames with a 4-byte big-endian length prefix.
func echoLength(reader *bufio.Reader, writer *bufio.Writer) error {
	var large []byte
	for {
		header, err := reader.Peek(4)
		if err != nil {
			return err
		}
		size := int(binary.BigEndian.Uint32(header))
		if size > maxFrame {
			return errors.New("frame too long")
		}
		if 4+size <= reader.Size() {
			frame, err := reader.Peek(4 + size)
			if err != nil {
				return err
			}
			writer.Write(frame)
			reader.Discard(4 + size)
		} else {
			// Larger than the reader's buffer: read it whole into one reusable
			// buffer, prefix included, so that it goes out in one write.
			if cap(large) < 4+size {
				large = make([]byte, 4+size)
			}
			frame := large[:4+size]
			copy(frame, header)
			reader.Discard(4)
			if _, err := io.ReadFull(reader, frame[4:]); err != nil {
				return err
			}
			writer.Write(frame)
		}
		if !frameBuffered(reader) {
			if err := writer.Flush(); err != nil {
				return err
			}
		}
	}
}
