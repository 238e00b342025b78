/* Compiled versions of the decoders' two hot scans (triodaemon/_framing.py).
 *
 * Optional: setup.py builds this module where a C compiler and Python's headers
 * are at hand and goes on without it where they are not; _framing.py then runs
 * its pure-Python scans, which give the same answers (tests/test_speedups.py and
 * fuzz/ check both against each other). TRIODAEMON_NO_SPEEDUPS=1 in the
 * environment makes _framing.py ignore this module.
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
 * Both take any contiguous buffer (bytes, bytearray, memoryview), hold it only
 * while they run, and run no Python code meanwhile.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

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
    Py_ssize_t ints[7]; /* start, end, n, big, skip, limit, most */
    Py_buffer view;
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError,
                        "walk_lengths(data, start, end, n, big, skip, limit, most) takes 8 arguments");
        return NULL;
    }
    if (ssize_args(args, 1, 7, ints) < 0) {
        return NULL;
    }
    Py_ssize_t start = ints[0], end = ints[1], n = ints[2], skip = ints[4], limit = ints[5],
               most = ints[6];
    int big = ints[3] != 0;
    if (n != 1 && n != 2 && n != 4 && n != 8) {
        PyErr_SetString(PyExc_ValueError, "n must be 1, 2, 4 or 8");
        return NULL;
    }
    if (skip < 0 || limit < 0) {
        PyErr_SetString(PyExc_ValueError, "skip and limit must not be negative");
        return NULL;
    }
    if (span(args[0], &view, start, end) < 0) {
        return NULL;
    }
    const unsigned char *p = (const unsigned char *)view.buf;
    Py_ssize_t pos = start, count = 0, last = end - n; /* where the last whole header can start */
    uint64_t value = 0;
    int bad = 0;
    while (pos <= last && count < most) {
        const unsigned char *h = p + pos;
        value = 0;
        if (big) {
            for (Py_ssize_t i = 0; i < n; i++) {
                value = (value << 8) | h[i];
            }
        }
        else {
            for (Py_ssize_t i = n - 1; i >= 0; i--) {
                value = (value << 8) | h[i];
            }
        }
        if (value < (uint64_t)skip || value - (uint64_t)skip > (uint64_t)limit) {
            bad = 1;
            break;
        }
        Py_ssize_t length = (Py_ssize_t)(value - (uint64_t)skip);
        if (last - pos < length) {
            break; /* unfinished */
        }
        pos += n + length;
        count++;
    }
    PyBuffer_Release(&view);
    if (bad) {
        return Py_BuildValue("(nnK)", pos, count, (unsigned long long)value);
    }
    return Py_BuildValue("(nni)", pos, count, -1);
}

static PyMethodDef speedups_methods[] = {
    {"count_byte", (PyCFunction)(void (*)(void))count_byte, METH_FASTCALL,
     "count_byte(data, byte, start, end): occurrences of byte in data[start:end]."},
    {"walk_lengths", (PyCFunction)(void (*)(void))walk_lengths, METH_FASTCALL,
     "walk_lengths(data, start, end, n, big, skip, limit, most) -> (pos, count, bad)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    "triodaemon._speedups",
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
