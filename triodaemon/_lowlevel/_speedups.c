/* Compiled versions of the decoders' two hot scans and of the echo's read.
 *
 * Optional: setup.py builds this module where a C compiler and Python's headers
 * are at hand and goes on without it where they are not; scans.py then gives the
 * decoders its pure-Python scans, which give the same answers
 * (tests/test_speedups.py and fuzz/ check both against each other), and every
 * read of the echo goes through Python. TRIODAEMON_NO_SPEEDUPS=1 in the
 * environment does the same with the module built. Two modules import it:
 * scans.py (count_byte, walk_lengths) and sockets.py (recv_echo).
 *
 * count_byte(data, byte, start, end) -> int
 *     How many times `byte` occurs in data[start:end]: bytes.count() for a
 *     one-byte needle, which CPython counts one byte at a time.
 *
 * walk_lengths(data, start, end, n, big, skip, limit, most) -> (pos, count, bad)
 *     Walk the length-prefixed frames in data[start:end] (n-byte headers, big or
 *     little endian, `skip` bytes of the header counted in the length) and stop
 *     after `most` frames, at an unfinished one, or at a header whose length is
 *     below `skip` or whose payload is above `limit`. Returns where the walk
 *     stopped, how many whole frames it passed, and the raw header value that
 *     stopped it (-1 if none did).
 *
 * whole_frames(data, start, end, shape) -> frames | -1
 *     The echo's rule, "is this read whole frames?", in one place for both paths:
 *     how many frames data[start:end] is when it is whole frames of `shape`
 *     (delim, n, big, skip, limit: a one-byte delimiter and any span of at most
 *     `limit` bytes that ends with it, or delim -1 and length headers as for
 *     walk_lengths), else -1; an empty span is 0 frames. recv_echo decides with it,
 *     and so do the decoders (through scans.py) where the compiled scans run.
 *
 * recv_echo(fd, buf, size, shape) -> (received, frames, sent) | None
 *     The echo's read for a connection whose decoder holds nothing: one recv()
 *     of up to `size` bytes into `buf`, and when the read is whole frames of
 *     `shape` (delim, n, big, skip, limit: a one-byte delimiter, or delim -1 and
 *     length headers as for walk_lengths), one send() of it. None if the read
 *     would block; else the bytes received (0: end of file), the frames (-1 when
 *     the read is not whole frames: nothing was sent, and the caller frames the
 *     read itself), and the bytes sent (-errno if send failed). An OSError if the
 *     recv failed.
 *
 * All take any contiguous buffer (bytes, bytearray, memoryview), hold it only
 * while they run, and run no Python code meanwhile.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <sys/socket.h>

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0 /* (where there is none, SIGPIPE is ignored, as Python does) */
#endif

/* Occurrences of c in p[0:n], in blocks of up to 255 x 16 bytes counted in
 * sixteen one-byte lanes (a shape compilers turn into vector compares). */
static Py_ssize_t
count_in(const unsigned char *p, Py_ssize_t n, unsigned char c)
{
    Py_ssize_t total = 0;
    while (n >= 16) {
        Py_ssize_t blocks = n / 16;
        if (blocks > 255) {
            blocks = 255; /* a lane counts at most 255 before it wraps */
        }
        unsigned char lanes[16] = {0};
        for (Py_ssize_t b = 0; b < blocks; b++) {
            for (int k = 0; k < 16; k++) {
                lanes[k] += (unsigned char)(p[k] == c);
            }
            p += 16;
        }
        for (int k = 0; k < 16; k++) {
            total += lanes[k];
        }
        n -= blocks * 16;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        total += (p[i] == c);
    }
    return total;
}

/* The walk over length headers in p[start:end], for walk_lengths and recv_echo:
 * where it stopped (after at most `most` whole frames, at an unfinished one, or at
 * a bad header), the frames it passed (*count), and the bad header's raw value
 * (*bad set) if one stopped it. A `saturated` limit is 2**64 or more: no header
 * announces more. */
static Py_ssize_t
walk(const unsigned char *p, Py_ssize_t start, Py_ssize_t end, Py_ssize_t n, int big,
     Py_ssize_t skip, uint64_t limit, int saturated, Py_ssize_t most, Py_ssize_t *count,
     int *bad, uint64_t *value)
{
    Py_ssize_t pos = start, last = end - n; /* where the last whole header can start */
    *count = 0;
    *bad = 0;
    while (pos <= last && *count < most) {
        const unsigned char *h = p + pos;
        uint64_t v = 0;
        if (big) {
            for (Py_ssize_t i = 0; i < n; i++) {
                v = (v << 8) | h[i];
            }
        }
        else {
            for (Py_ssize_t i = n - 1; i >= 0; i--) {
                v = (v << 8) | h[i];
            }
        }
        if (v < (uint64_t)skip || (!saturated && v - (uint64_t)skip > limit)) {
            *bad = 1;
            *value = v;
            break;
        }
        uint64_t length = v - (uint64_t)skip;
        if ((uint64_t)(last - pos) < length) {
            break; /* unfinished (also when longer than any buffer) */
        }
        pos += n + (Py_ssize_t)length;
        (*count)++;
    }
    return pos;
}

/* Integer arguments args[first:first+count] into out[]; -1 with an exception set on failure. */
static int
ssize_args(PyObject *const *args, Py_ssize_t first, Py_ssize_t count, Py_ssize_t *out)
{
    for (Py_ssize_t i = 0; i < count; i++) {
        out[i] = PyLong_AsSsize_t(args[first + i]);
        if (out[i] == -1 && PyErr_Occurred()) {
            return -1;
        }
    }
    return 0;
}

/* A frame limit, exactly up to 2**64 - 1; any int above is UINT64_MAX with
 * *saturated set (no 64-bit header announces more); -1 with an exception set on
 * failure. */
static int
limit_arg(PyObject *arg, uint64_t *out, int *saturated)
{
    *saturated = 0;
    Py_ssize_t small = PyLong_AsSsize_t(arg); /* (every limit but the huge: no allocation) */
    if (!(small == -1 && PyErr_Occurred())) {
        if (small < 0) {
            PyErr_SetString(PyExc_ValueError, "limit must not be negative");
            return -1;
        }
        *out = (uint64_t)small;
        return 0;
    }
    if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
        return -1;
    }
    PyErr_Clear();
    unsigned long long value = PyLong_AsUnsignedLongLong(arg); /* (negative: OverflowError) */
    if (value == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
            return -1;
        }
        PyErr_Clear();
        PyObject *zero = PyLong_FromLong(0);
        int positive = zero == NULL ? -1 : PyObject_RichCompareBool(arg, zero, Py_GT);
        Py_XDECREF(zero);
        if (positive < 0) {
            return -1;
        }
        if (!positive) {
            PyErr_SetString(PyExc_ValueError, "limit must not be negative");
            return -1;
        }
        *out = UINT64_MAX;
        *saturated = 1;
        return 0;
    }
    *out = (uint64_t)value;
    return 0;
}

/* The buffer of args[0], checked to hold data[start:end]; -1 with an exception set on failure. */
static int
span(PyObject *data, Py_buffer *view, Py_ssize_t start, Py_ssize_t end)
{
    if (PyObject_GetBuffer(data, view, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    if (start < 0 || start > end || end > view->len) {
        PyErr_Format(PyExc_ValueError, "span [%zd:%zd] is not within a buffer of %zd bytes",
                     start, end, view->len);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *
count_byte(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t ints[3]; /* byte, start, end */
    Py_buffer view;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "count_byte(data, byte, start, end) takes 4 arguments");
        return NULL;
    }
    if (ssize_args(args, 1, 3, ints) < 0) {
        return NULL;
    }
    if (ints[0] < 0 || ints[0] > 255) {
        PyErr_SetString(PyExc_ValueError, "byte must be in range(256)");
        return NULL;
    }
    if (span(args[0], &view, ints[1], ints[2]) < 0) {
        return NULL;
    }
    Py_ssize_t found =
        count_in((const unsigned char *)view.buf + ints[1], ints[2] - ints[1], (unsigned char)ints[0]);
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(found);
}

static PyObject *
walk_lengths(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t ints[7]; /* start, end, n, big, skip, (limit), most */
    uint64_t limit;
    int saturated;
    Py_buffer view;
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError,
                        "walk_lengths(data, start, end, n, big, skip, limit, most) takes 8 arguments");
        return NULL;
    }
    if (ssize_args(args, 1, 5, ints) < 0 || limit_arg(args[6], &limit, &saturated) < 0 ||
        ssize_args(args, 7, 1, ints + 6) < 0) {
        return NULL;
    }
    Py_ssize_t start = ints[0], end = ints[1], n = ints[2], skip = ints[4], most = ints[6];
    int big = ints[3] != 0;
    if (n != 1 && n != 2 && n != 4 && n != 8) {
        PyErr_SetString(PyExc_ValueError, "n must be 1, 2, 4 or 8");
        return NULL;
    }
    if (skip < 0) {
        PyErr_SetString(PyExc_ValueError, "skip must not be negative");
        return NULL;
    }
    if (span(args[0], &view, start, end) < 0) {
        return NULL;
    }
    Py_ssize_t count;
    int bad;
    uint64_t value = 0;
    Py_ssize_t pos = walk((const unsigned char *)view.buf, start, end, n, big, skip, limit,
                          saturated, most, &count, &bad, &value);
    PyBuffer_Release(&view);
    if (bad) {
        return Py_BuildValue("(nnK)", pos, count, (unsigned long long)value);
    }
    return Py_BuildValue("(nni)", pos, count, -1);
}


/* Where the frames of p[0:n] end, and how many: n and the count when the read is
 * whole frames, else -1. A delimiter of one byte (delim >= 0; any read of at most
 * `limit` bytes that ends with it), or length headers (delim < 0). */
static Py_ssize_t
whole_frames(const unsigned char *p, Py_ssize_t n, long delim, Py_ssize_t hn, int big,
             Py_ssize_t skip, uint64_t limit, int saturated)
{
    if (delim >= 0) {
        if ((!saturated && (uint64_t)n > limit) || p[n - 1] != (unsigned char)delim) {
            return -1;
        }
        return count_in(p, n, (unsigned char)delim);
    }
    Py_ssize_t count;
    int bad;
    uint64_t value;
    Py_ssize_t pos = walk(p, 0, n, hn, big, skip, limit, saturated, PY_SSIZE_T_MAX, &count, &bad,
                          &value);
    return pos == n ? count : -1;
}

/* A shape tuple (delim, n, big, skip, limit) into shape[4], *limit and *saturated;
 * -1 with an exception set if it is not one. */
static int
shape_arg(PyObject *arg, Py_ssize_t *shape, uint64_t *limit, int *saturated)
{
    if (!PyTuple_Check(arg) || PyTuple_GET_SIZE(arg) != 5) {
        PyErr_SetString(PyExc_TypeError, "shape must be a tuple (delim, n, big, skip, limit)");
        return -1;
    }
    if (ssize_args(&PyTuple_GET_ITEM(arg, 0), 0, 4, shape) < 0 ||
        limit_arg(PyTuple_GET_ITEM(arg, 4), limit, saturated) < 0) {
        return -1;
    }
    if (shape[0] < -1 || shape[0] > 255 ||
        (shape[0] < 0 && shape[1] != 1 && shape[1] != 2 && shape[1] != 4 && shape[1] != 8) ||
        shape[3] < 0) {
        PyErr_SetString(PyExc_ValueError, "bad shape");
        return -1;
    }
    return 0;
}

static PyObject *
whole_frames_of(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t ints[2]; /* start, end */
    Py_ssize_t shape[4]; /* delim, n, big, skip */
    uint64_t limit;
    int saturated;
    Py_buffer view;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "whole_frames(data, start, end, shape) takes 4 arguments");
        return NULL;
    }
    if (ssize_args(args, 1, 2, ints) < 0 || shape_arg(args[3], shape, &limit, &saturated) < 0) {
        return NULL;
    }
    if (span(args[0], &view, ints[0], ints[1]) < 0) {
        return NULL;
    }
    Py_ssize_t n = ints[1] - ints[0];
    Py_ssize_t frames = n ? whole_frames((const unsigned char *)view.buf + ints[0], n,
                                         (long)shape[0], shape[1], shape[2] != 0, shape[3],
                                         limit, saturated)
                          : 0;
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(frames);
}

static PyObject *
recv_echo(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t ints[2]; /* fd, size */
    Py_ssize_t shape[4]; /* delim, n, big, skip */
    uint64_t limit;
    int saturated;
    Py_buffer view;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "recv_echo(fd, buf, size, shape) takes 4 arguments");
        return NULL;
    }
    if (ssize_args(args, 0, 1, ints) < 0 || ssize_args(args, 2, 1, ints + 1) < 0 ||
        shape_arg(args[3], shape, &limit, &saturated) < 0) {
        return NULL;
    }
    if (ints[1] < 1) {
        PyErr_SetString(PyExc_ValueError, "bad size");
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &view, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    if (ints[1] > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "size is larger than the buffer");
        return NULL;
    }
    int fd = (int)ints[0];
    unsigned char *p = (unsigned char *)view.buf;
    ssize_t got = recv(fd, p, (size_t)ints[1], 0);
    if (got < 0) {
        int err = errno;
        PyBuffer_Release(&view);
        if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR) {
            Py_RETURN_NONE; /* (EINTR: the level-triggered wait says "ready" again) */
        }
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_ssize_t frames =
        got ? whole_frames(p, got, (long)shape[0], shape[1], shape[2] != 0, shape[3], limit,
                           saturated)
            : -1;
    Py_ssize_t sent = 0;
    if (frames > 0) {
        ssize_t put = send(fd, p, (size_t)got, MSG_NOSIGNAL);
        if (put >= 0) {
            sent = put;
        }
        else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            sent = -errno;
        }
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(nnn)", (Py_ssize_t)got, frames, sent);
}

static PyMethodDef speedups_methods[] = {
    {"count_byte", (PyCFunction)(void (*)(void))count_byte, METH_FASTCALL,
     "count_byte(data, byte, start, end): occurrences of byte in data[start:end]."},
    {"walk_lengths", (PyCFunction)(void (*)(void))walk_lengths, METH_FASTCALL,
     "walk_lengths(data, start, end, n, big, skip, limit, most) -> (pos, count, bad)."},
    {"whole_frames", (PyCFunction)(void (*)(void))whole_frames_of, METH_FASTCALL,
     "whole_frames(data, start, end, shape) -> frames, or -1 if data[start:end] is not whole frames."},
    {"recv_echo", (PyCFunction)(void (*)(void))recv_echo, METH_FASTCALL,
     "recv_echo(fd, buf, size, shape) -> (received, frames, sent), or None if it would block."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    "triodaemon._lowlevel._speedups",
    "Compiled versions of the decoders' hot scans (optional).",
    0,
    speedups_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
