/*
 * Waking a reader of shared memory the moment a 32-bit word there changes: Linux futexes on
 * the shared mapping (not FUTEX_PRIVATE: the waiter and the waker are different processes).
 *
 * Optional: shm/book.py uses it when it compiled (and the kernel has futex_waitv, Linux 5.16+);
 * readers that cannot wait this way are woken by the bus instead. The protocol is the usual one:
 * the writer stores the new value, then wakes; a waiter passes the value it last saw and the
 * kernel sleeps only if the word still holds it (no lost wake-up between look and sleep).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifdef __linux__
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef __NR_futex_waitv
#define __NR_futex_waitv 449 /* x86-64 and the generic table */
#endif

enum { MAX_WAITERS = 128, SIZE_U32 = 0x02 };

struct waiter { /* struct futex_waitv, spelled out for older headers */
    uint64_t value;
    uint64_t address;
    uint32_t flags;
    uint32_t reserved;
};

static int word_address(PyObject *buffer_object, Py_ssize_t offset, Py_buffer *view, uint32_t **word) {
    if (PyObject_GetBuffer(buffer_object, view, PyBUF_SIMPLE) < 0)
        return -1;
    if (offset < 0 || offset + 4 > view->len || (((uintptr_t)view->buf + offset) & 3)) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "futex word outside the buffer or not 4-byte aligned");
        return -1;
    }
    *word = (uint32_t *)((char *)view->buf + offset);
    return 0;
}

/* wake(buffer, offset) → how many waiters were woken. */
static PyObject *wake(PyObject *self, PyObject *args) {
    PyObject *buffer_object;
    Py_ssize_t offset;
    if (!PyArg_ParseTuple(args, "On", &buffer_object, &offset))
        return NULL;
    Py_buffer view;
    uint32_t *word;
    if (word_address(buffer_object, offset, &view, &word) < 0)
        return NULL;
    long woken = syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
    PyBuffer_Release(&view);
    if (woken < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLong(woken);
}

/* wait_any(words, timeout_s) with words a sequence of (buffer, offset, last seen value):
 * returns True as soon as one of the words holds another value (at once if one already does),
 * False after timeout_s. The GIL is released while it sleeps. */
static PyObject *wait_any(PyObject *self, PyObject *args) {
    PyObject *words_object;
    double timeout_s;
    if (!PyArg_ParseTuple(args, "Od", &words_object, &timeout_s))
        return NULL;
    PyObject *words = PySequence_Fast(words_object, "words must be a sequence");
    if (words == NULL)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(words);
    if (count < 1 || count > MAX_WAITERS) {
        Py_DECREF(words);
        PyErr_SetString(PyExc_ValueError, "wait_any: between 1 and 128 words");
        return NULL;
    }
    struct waiter waiters[MAX_WAITERS];
    Py_buffer views[MAX_WAITERS];
    Py_ssize_t held = 0;
    PyObject *result = NULL;
    for (; held < count; held++) {
        PyObject *buffer_object;
        Py_ssize_t offset;
        unsigned long long seen;
        uint32_t *word;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(words, held), "OnK", &buffer_object, &offset, &seen) ||
            word_address(buffer_object, offset, &views[held], &word) < 0)
            goto done;
        waiters[held] = (struct waiter){.value = (uint32_t)seen, .address = (uintptr_t)word, .flags = SIZE_U32};
    }
    /* Look before asking the kernel: futex_waitv with a deadline arms a timer, and on a
     * virtual machine that costs ~25 us even when a word has already changed. */
    for (Py_ssize_t index = 0; index < count; index++) {
        if (__atomic_load_n((uint32_t *)(uintptr_t)waiters[index].address, __ATOMIC_ACQUIRE) != waiters[index].value) {
            result = Py_NewRef(Py_True);
            goto done;
        }
    }
    if (!(timeout_s > 0.0)) {
        result = Py_NewRef(Py_False);
        goto done;
    }
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    double whole = timeout_s;
    deadline.tv_sec += (time_t)whole;
    deadline.tv_nsec += (long)((whole - (double)(time_t)whole) * 1e9);
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec += 1;
        deadline.tv_nsec -= 1000000000L;
    }
    long outcome;
    int error;
    Py_BEGIN_ALLOW_THREADS
    outcome = syscall(__NR_futex_waitv, waiters, (unsigned int)count, 0, &deadline, CLOCK_MONOTONIC);
    error = errno;
    Py_END_ALLOW_THREADS
    if (outcome >= 0 || error == EAGAIN || error == EINTR) /* woken, a word had changed, or a signal */
        result = Py_NewRef(Py_True);
    else if (error == ETIMEDOUT)
        result = Py_NewRef(Py_False);
    else {
        errno = error;
        PyErr_SetFromErrno(PyExc_OSError);
    }
done:
    for (Py_ssize_t index = 0; index < held; index++)
        PyBuffer_Release(&views[index]);
    Py_DECREF(words);
    return result;
}

static PyMethodDef methods[] = {
    {"wake", wake, METH_VARARGS, "Wake every process waiting on a 32-bit word of a shared buffer."},
    {"wait_any", wait_any, METH_VARARGS, "Sleep until one of several shared 32-bit words changes."},
    {NULL, NULL, 0, NULL},
};
#else
static PyMethodDef methods[] = {{NULL, NULL, 0, NULL}};
#endif

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "shm._wake", NULL, -1, methods};

PyMODINIT_FUNC PyInit__wake(void) {
#ifndef __linux__
    PyErr_SetString(PyExc_ImportError, "shm._wake needs Linux futexes");
    return NULL;
#else
    return PyModule_Create(&module);
#endif
}
