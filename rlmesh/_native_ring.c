/*
 * rlmesh._native, part two: the per-step shared-memory primitives.
 *
 *  - futex_wait() / futex_wake(): the doorbell's system calls, without ctypes.
 *    futex_wait releases the GIL while it sleeps.
 *  - sched_yield().
 *  - wait_words(): the vector fast path's wait on its workers' (or its client's)
 *    sequence words: a bounded spin and one futex sleep, with the GIL released;
 *    bell_ring(): a doorbell's ring with an atomic increment (several ringers).
 *  - step_lanes(): the vector worker's loop over its lanes for the common case
 *    (env.step, the observation, reward and flags written into the batch buffer).
 *  - Ring: one end of a MessageRing (rlmesh/shm/ring.py documents the layout):
 *    put, peek, pop and get with the ring's free-running 64-bit counters
 *    (modulo 2**64), and the waits for a message or for room: a bounded spin
 *    and one futex sleep, both with the GIL released.
 *
 * The peer is not trusted: every counter, length and offset read from the
 * shared memory is checked against the ring's bounds before it is used, and a
 * record that does not fit raises the ring's `corrupt` exception (BrokenError)
 * instead of reading past the ring. The memory is reached through the
 * memoryview the ring was given, exported for the length of each call, so a
 * released (closed) segment raises ValueError and is never touched.
 *
 * No global state: each Ring keeps its own.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <structmember.h>
#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

#include "_native_ring.h"

static inline void
cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline double
now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* 1 woken or the value differed or interrupted; 0 timed out; -1 another error (errno). */
static int
futex_sleep(void *word, uint32_t expected, double timeout)
{
#ifdef __linux__
    struct timespec ts, *tsp = NULL;
    if (timeout >= 0) {
        double whole = floor(timeout);
        ts.tv_sec = (time_t)whole;
        ts.tv_nsec = (long)((timeout - whole) * 1e9);
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_nsec = 999999999L;
        }
        tsp = &ts;
    }
    long r = syscall(SYS_futex, word, FUTEX_WAIT, expected, tsp, NULL, 0);
    if (r == 0) {
        return 1;
    }
    if (errno == ETIMEDOUT) {
        return 0;
    }
    if (errno == EAGAIN || errno == EINTR) {
        return 1;
    }
    return -1;
#else
    (void)word;
    (void)expected;
    usleep(timeout < 0 || timeout > 0.001 ? 1000 : (useconds_t)(timeout * 1e6));
    return 1;
#endif
}

static inline void
futex_wake_one(void *word, int count)
{
#ifdef __linux__
    syscall(SYS_futex, word, FUTEX_WAKE, count, NULL, NULL, 0);
#else
    (void)word;
    (void)count;
#endif
}

/* A timeout argument: None is forever (-1); otherwise >= 0 and not NaN. */
static int
timeout_arg(PyObject *obj, double *out)
{
    if (obj == Py_None) {
        *out = -1.0;
        return 0;
    }
    double t = PyFloat_AsDouble(obj);
    if (t == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (!(t >= 0)) {
        PyErr_Format(PyExc_ValueError, "a futex timeout must be None or >= 0 seconds, got %R", obj);
        return -1;
    }
    if (isinf(t)) {
        t = -1.0;
    }
    *out = t;
    return 0;
}

PyDoc_STRVAR(futex_wait_doc,
"futex_wait(address, expected, timeout) -> bool\n\n"
"Sleep while the u32 at address equals expected, at most timeout seconds (None:\n"
"until woken; 0: never sleeps). The GIL is released while asleep. Returns False\n"
"if the timeout passed, True if woken, interrupted, or the value differed.\n"
"Raises ValueError for a negative or NaN timeout, OSError for a failed call.");

static PyObject *
native_futex_wait(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "futex_wait(address, expected, timeout)");
        return NULL;
    }
    void *address = PyLong_AsVoidPtr(args[0]);
    if (address == NULL && PyErr_Occurred()) {
        return NULL;
    }
    unsigned long expected = PyLong_AsUnsignedLongMask(args[1]);
    if (expected == (unsigned long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    double timeout;
    if (timeout_arg(args[2], &timeout) < 0) {
        return NULL;
    }
    int r;
    Py_BEGIN_ALLOW_THREADS
    r = futex_sleep(address, (uint32_t)expected, timeout);
    Py_END_ALLOW_THREADS
    if (r < 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyBool_FromLong(r);
}

PyDoc_STRVAR(futex_wake_doc,
"futex_wake(address, count=1)\n\n"
"Wake up to count waiters sleeping on the u32 at address.");

static PyObject *
native_futex_wake(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "futex_wake(address, count=1)");
        return NULL;
    }
    void *address = PyLong_AsVoidPtr(args[0]);
    if (address == NULL && PyErr_Occurred()) {
        return NULL;
    }
    int count = 1;
    if (nargs == 2) {
        long c = PyLong_AsLong(args[1]);
        if (c == -1 && PyErr_Occurred()) {
            return NULL;
        }
        count = c < 0 ? 0 : c > INT32_MAX ? INT32_MAX : (int)c;
    }
    futex_wake_one(address, count);
    Py_RETURN_NONE;
}

static PyObject *
native_sched_yield(PyObject *module, PyObject *unused)
{
    Py_BEGIN_ALLOW_THREADS
    sched_yield();
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* ---- Ring -------------------------------------------------------------------------- */


/* The ring's memory for one call: its control block, or NULL with an error set. */
char *
ring_enter(Ring *self, Py_buffer *view)
{
    if (PyObject_GetBuffer(self->buf, view, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    if (view->len < self->base + CONTROL + (Py_ssize_t)self->capacity) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "the ring does not fit in the buffer");
        return NULL;
    }
    char *mem = (char *)view->buf + self->base;
    if ((uintptr_t)mem & 7) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "the ring's memory is not 8-byte aligned");
        return NULL;
    }
    return mem;
}


static int
ring_init(Ring *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buf", "offset", "capacity", "corrupt", NULL};
    PyObject *buf, *corrupt;
    Py_ssize_t offset;
    unsigned long long capacity;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OnKO:Ring", kwlist, &buf, &offset, &capacity, &corrupt)) {
        return -1;
    }
    if (capacity < 64 || (capacity & (capacity - 1)) || capacity > ((uint64_t)1 << 40)) {
        PyErr_Format(PyExc_ValueError, "ring capacity must be a power of two >= 64, got %llu", capacity);
        return -1;
    }
    if (offset < 0 || offset % LINE) {
        PyErr_SetString(PyExc_ValueError, "a ring must start on a cache line");
        return -1;
    }
    if (!PyType_Check(corrupt) || !PyType_IsSubtype((PyTypeObject *)corrupt, (PyTypeObject *)PyExc_Exception)) {
        PyErr_SetString(PyExc_TypeError, "corrupt must be an exception class");
        return -1;
    }
    Py_INCREF(buf);
    Py_XSETREF(self->buf, buf);
    Py_INCREF(corrupt);
    Py_XSETREF(self->corrupt, corrupt);
    self->base = offset;
    self->capacity = capacity;
    self->mask = capacity - 1;
    self->max_message = capacity / 2 - RECORD;
    Py_buffer view;
    char *mem = ring_enter(self, &view);
    if (mem == NULL) {
        return -1;
    }
    self->head = atomic_load_explicit(HEAD_WORD(mem), memory_order_acquire);
    self->tail = atomic_load_explicit(TAIL_WORD(mem), memory_order_acquire);
    PyBuffer_Release(&view);
    self->peeked = 0;
    self->tag = 0;
    return 0;
}

static void
ring_dealloc(Ring *self)
{
    Py_CLEAR(self->buf);
    Py_CLEAR(self->corrupt);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyObject *
ring_corrupt(Ring *self, const char *what)
{
    PyErr_Format(self->corrupt, "corrupt ring: %s", what);
    return NULL;
}

/* Make room for an n-byte record (n <= max_message): 1 with *pos its offset
 * in the records (a wrap marker written before it if need be, the private
 * head moved past it); 0 when the room is not free yet, *need the bytes it
 * takes (nothing written); -1 corrupt (error set). ring_publish() sends it. */
int
ring_reserve(Ring *self, char *mem, uint64_t n, uint64_t *pos_out, uint64_t *need_out)
{
    uint64_t cap = self->capacity, record = RECORD + PAD8(n), head = self->head;
    uint64_t pos = head & self->mask, room_to_end = cap - pos;
    uint64_t need = record <= room_to_end ? record : room_to_end + record;
    if (pos & 7) {
        ring_corrupt(self, "the head is not 8-byte aligned");
        return -1;
    }
    if (cap - (head - self->tail) < need || head - self->tail > cap) {
        self->tail = atomic_load_explicit(TAIL_WORD(mem), memory_order_acquire);
        uint64_t used = head - self->tail;
        if (used > cap) {
            ring_corrupt(self, "the consumer's tail is past the head");
            return -1;
        }
        if (cap - used < need) {
            *need_out = need;
            return 0;
        }
    }
    if (record > room_to_end) {
        atomic_store_explicit(U32_AT(mem + CONTROL, pos), WRAP, memory_order_relaxed);
        self->head = head + room_to_end;
        pos = 0;
    }
    *pos_out = pos;
    return 1;
}

/* Publish the n-byte record reserved at `pos` (its payload written) and ring the consumer. */
void
ring_publish(Ring *self, char *mem, uint64_t pos, uint64_t n, uint32_t tag)
{
    char *records = mem + CONTROL;
    atomic_store_explicit(U32_AT(records, pos), (uint32_t)n, memory_order_relaxed);
    atomic_store_explicit(U32_AT(records, pos + 4), tag, memory_order_relaxed);
    uint64_t head = self->head + RECORD + PAD8(n);
    self->head = head;
    /* Release: the record is in place before the head says so (a plain store on x86). */
    atomic_store_explicit(HEAD_WORD(mem), head, memory_order_release);
    /* The data doorbell: bump its sequence, then (after a full fence, the
     * Dekker pattern against the waiter's flag-then-check) wake a flagged waiter. */
    a32 *seq = U32_AT(mem, OFF_DATA_BELL);
    atomic_store_explicit(seq, atomic_load_explicit(seq, memory_order_relaxed) + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(U32_AT(mem, OFF_DATA_BELL + 4), memory_order_relaxed)) {
        futex_wake_one(seq, 1);
    }
}

/* Ring.put(data, tag) -> int: 0 once the message is in and the consumer rung;
 * else the bytes it needs, which are not free yet (nothing written). */
static PyObject *
ring_put(Ring *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "put(data, tag)");
        return NULL;
    }
    unsigned long tag = PyLong_AsUnsignedLongMask(args[1]);
    if (tag == (unsigned long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer data;
    if (PyObject_GetBuffer(args[0], &data, PyBUF_C_CONTIGUOUS) < 0) {
        return NULL;
    }
    uint64_t n = (uint64_t)data.len;
    if (n > self->max_message) {
        PyBuffer_Release(&data);
        return PyErr_Format(PyExc_ValueError, "a %llu-byte message exceeds this ring's limit of %llu bytes",
                            (unsigned long long)n, (unsigned long long)self->max_message);
    }
    Py_buffer view;
    char *mem = ring_enter(self, &view);
    if (mem == NULL) {
        PyBuffer_Release(&data);
        return NULL;
    }
    uint64_t pos = 0, need = 0;
    PyObject *result = NULL;
    int reserved = ring_reserve(self, mem, n, &pos, &need);
    if (reserved > 0) {
        /* memmove: the message may be a view of this very segment. */
        memmove(mem + CONTROL + pos + RECORD, data.buf, (size_t)n);
        ring_publish(self, mem, pos, n, (uint32_t)tag);
        result = PyLong_FromLong(0);
    }
    else if (reserved == 0) {
        result = PyLong_FromUnsignedLongLong(need);
    }
    PyBuffer_Release(&view);
    PyBuffer_Release(&data);
    return result;
}

/* Find the next record for the consumer: 1 found (*pos, *n, *tag set, the
 * tail moved past a wrap marker), 0 empty, -1 corrupt (error set). */
int
ring_locate(Ring *self, char *mem, uint64_t *pos_out, uint64_t *n_out, uint32_t *tag_out)
{
    uint64_t head = atomic_load_explicit(HEAD_WORD(mem), memory_order_acquire);
    uint64_t tail = self->tail, cap = self->capacity;
    if (head == tail) {
        return 0;
    }
    uint64_t avail = head - tail;
    uint64_t pos = tail & self->mask;
    char *records = mem + CONTROL;
    if (avail > cap || (pos & 7) || avail < RECORD) {
        ring_corrupt(self, "the producer's head is out of range");
        return -1;
    }
    uint32_t n = atomic_load_explicit(U32_AT(records, pos), memory_order_relaxed);
    if (n == WRAP) {
        uint64_t skip = cap - pos;
        if (skip + RECORD > avail) {
            ring_corrupt(self, "a wrap marker with nothing after it");
            return -1;
        }
        tail += skip;
        avail -= skip;
        self->tail = tail;
        pos = 0;
        n = atomic_load_explicit(U32_AT(records, 0), memory_order_relaxed);
    }
    uint64_t span = RECORD + PAD8(n);
    if (n > self->max_message || span > avail || pos + span > cap) {
        PyErr_Format(self->corrupt, "corrupt ring: a record claims %u bytes", n);
        return -1;
    }
    *pos_out = pos;
    *n_out = n;
    *tag_out = atomic_load_explicit(U32_AT(records, pos + 4), memory_order_relaxed);
    return 1;
}

/* Ring.peek() -> memoryview | None: a view of the next message (kept until
 * pop()), or None when the ring is empty; `tag` holds its tag. */
static PyObject *
ring_peek(Ring *self, PyObject *unused)
{
    Py_buffer view;
    char *mem = ring_enter(self, &view);
    if (mem == NULL) {
        return NULL;
    }
    uint64_t pos, n;
    uint32_t tag;
    int found = ring_locate(self, mem, &pos, &n, &tag);
    PyBuffer_Release(&view);
    if (found <= 0) {
        if (found == 0) {
            Py_RETURN_NONE;
        }
        return NULL;
    }
    self->peeked = RECORD + PAD8(n);
    self->tag = tag;
    Py_ssize_t start = self->base + CONTROL + (Py_ssize_t)pos + RECORD;
    PyObject *lo = PyLong_FromSsize_t(start), *hi = PyLong_FromSsize_t(start + (Py_ssize_t)n);
    PyObject *slice = (lo && hi) ? PySlice_New(lo, hi, NULL) : NULL;
    Py_XDECREF(lo);
    Py_XDECREF(hi);
    if (slice == NULL) {
        return NULL;
    }
    PyObject *result = PyObject_GetItem(self->buf, slice);
    Py_DECREF(slice);
    return result;
}

/* Publish the tail past `span` bytes and wake a producer waiting for room. */
void
ring_advance(Ring *self, char *mem, uint64_t span)
{
    self->tail += span;
    atomic_store_explicit(TAIL_WORD(mem), self->tail, memory_order_release);
    /* The space bell, relaxed (no fence): a producer waiting for room sleeps
     * in 1 ms slices, and only one that flagged itself needs a wake. */
    if (atomic_load_explicit(U32_AT(mem, OFF_SPACE_BELL + 4), memory_order_relaxed)) {
        a32 *seq = U32_AT(mem, OFF_SPACE_BELL);
        atomic_store_explicit(seq, atomic_load_explicit(seq, memory_order_relaxed) + 1, memory_order_relaxed);
        futex_wake_one(seq, 1);
    }
}

/* Ring.pop(): consume the record the last peek returned (or the next one). */
static PyObject *
ring_pop(Ring *self, PyObject *unused)
{
    Py_buffer view;
    char *mem = ring_enter(self, &view);
    if (mem == NULL) {
        return NULL;
    }
    uint64_t span = self->peeked;
    if (span == 0) {
        uint64_t pos, n;
        uint32_t tag;
        int found = ring_locate(self, mem, &pos, &n, &tag);
        if (found <= 0) {
            PyBuffer_Release(&view);
            if (found == 0) {
                PyErr_SetString(PyExc_RuntimeError, "pop() on an empty ring");
            }
            return NULL;
        }
        span = RECORD + PAD8(n);
    }
    self->peeked = 0;
    ring_advance(self, mem, span);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

/* Ring.get() -> bytes | None: a copy of the next message, consumed; None if empty. */
static PyObject *
ring_get(Ring *self, PyObject *unused)
{
    Py_buffer view;
    char *mem = ring_enter(self, &view);
    if (mem == NULL) {
        return NULL;
    }
    uint64_t pos, n;
    uint32_t tag;
    int found = ring_locate(self, mem, &pos, &n, &tag);
    PyObject *result = NULL;
    if (found == 0) {
        result = Py_None;
        Py_INCREF(result);
    }
    else if (found > 0) {
        result = PyBytes_FromStringAndSize(mem + CONTROL + pos + RECORD, (Py_ssize_t)n);
        if (result != NULL) {
            self->tag = tag;
            self->peeked = 0;
            ring_advance(self, mem, RECORD + PAD8(n));
        }
    }
    PyBuffer_Release(&view);
    return result;
}

/* The waits' conditions, read with the GIL released (only this object's
 * plain fields and the shared words: no Python object is touched). */
static int
closed_flags(char *mem)
{
    return atomic_load_explicit(U32_AT(mem, OFF_PRODUCER_CLOSED), memory_order_acquire)
           || atomic_load_explicit(U32_AT(mem, OFF_CONSUMER_CLOSED), memory_order_acquire);
}

static int
data_ready(Ring *self, char *mem, uint64_t need)
{
    return atomic_load_explicit(HEAD_WORD(mem), memory_order_acquire) != self->tail || closed_flags(mem);
}

static int
space_ready(Ring *self, char *mem, uint64_t need)
{
    uint64_t used = self->head - atomic_load_explicit(TAIL_WORD(mem), memory_order_acquire);
    /* A tail past the head (a hostile peer) counts as ready: put() then says so. */
    return used > self->capacity || self->capacity - used >= need || closed_flags(mem);
}

/* A condition a waiter polls: ready(ctx) is nonzero once it holds. */
typedef int (*ready_fn)(void *ctx);

/* The one wait of every native waiter: spin up to `spin` s (pausing, and yielding the
 * core every 64 polls), then (if `sleep` > 0) flag the doorbell at `bell` of `mem`
 * (u32 seq, u32 waiting) and sleep on its futex at most `sleep` s, once. 1 ready while
 * spinning, 2 ready after it (or at the one look when neither spin nor sleep), 0 not
 * ready; *error is errno of a failed futex call, else 0; *slept (when not NULL) counts
 * the sleeps. Call it with the GIL released. */
static int
spin_then_sleep(ready_fn ready, void *ctx, char *mem, Py_ssize_t bell, double spin, double sleep,
                unsigned long long *slept, int *error)
{
    int outcome = 0;
    *error = 0;
    if (spin > 0) {
        double until = now_s() + spin;
        for (unsigned polls = 1;; polls++) {
            if (ready(ctx)) {
                return 1;
            }
            cpu_relax();
            if ((polls & 63) == 0) {
                if (now_s() >= until) {
                    break;
                }
                /* Hand the core over if anyone else wants it (the peer, say):
                 * when nobody does, this costs one system call. */
                sched_yield();
            }
        }
    }
    if (sleep > 0) {
        a32 *seq = U32_AT(mem, bell), *waiting = U32_AT(mem, bell + 4);
        atomic_store_explicit(waiting, 1, memory_order_relaxed);
        atomic_thread_fence(memory_order_seq_cst);
        uint32_t expected = atomic_load_explicit(seq, memory_order_relaxed);
        if (ready(ctx)) {
            outcome = 2;
        }
        else {
            if (slept != NULL) {
                (*slept)++;
            }
            if (futex_sleep(seq, expected, sleep) < 0) {
                *error = errno;
            }
            else if (ready(ctx)) {
                outcome = 2;
            }
        }
        atomic_store_explicit(waiting, 0, memory_order_relaxed);
    }
    else if (spin <= 0 && ready(ctx)) {
        outcome = 2; /* neither spin nor sleep: one look */
    }
    return outcome;
}

/* A ring's readiness test with its arguments, as spin_then_sleep polls it. */
typedef struct {
    Ring *self;
    char *mem;
    uint64_t need;
    int (*test)(Ring *, char *, uint64_t);
} RingReady;

static int
ring_ready(void *ctx)
{
    RingReady *r = (RingReady *)ctx;
    return r->test(r->self, r->mem, r->need);
}

/* Spin, then one futex sleep, on the bell at `bell` until `ready` (see spin_then_sleep),
 * with the GIL released. */
static int
ring_wait_on(Ring *self, char *mem, int (*ready)(Ring *, char *, uint64_t), uint64_t need, Py_ssize_t bell,
             double spin, double sleep, int *error)
{
    RingReady ctx = {self, mem, need, ready};
    int outcome;
    Py_BEGIN_ALLOW_THREADS
    outcome = spin_then_sleep(ring_ready, &ctx, mem, bell, spin, sleep, &self->slept, error);
    Py_END_ALLOW_THREADS
    if (outcome == 1) {
        self->spun++;
    }
    return outcome;
}

static PyObject *
ring_wait_common(Ring *self, PyObject *const *args, Py_ssize_t nargs, int space)
{
    Py_ssize_t want = space ? 3 : 2;
    if (nargs != want) {
        PyErr_SetString(PyExc_TypeError, space ? "wait_space(need, spin, sleep)" : "wait_data(spin, sleep)");
        return NULL;
    }
    uint64_t need = 0;
    if (space) {
        need = PyLong_AsUnsignedLongLong(args[0]);
        if (need == (uint64_t)-1 && PyErr_Occurred()) {
            return NULL;
        }
    }
    double spin = PyFloat_AsDouble(args[want - 2]);
    double sleep = PyFloat_AsDouble(args[want - 1]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (!(spin >= 0) || !(sleep >= 0)) {
        PyErr_SetString(PyExc_ValueError, "spin and sleep must be >= 0 seconds");
        return NULL;
    }
    Py_buffer view;
    char *mem = ring_enter(self, &view);
    if (mem == NULL) {
        return NULL;
    }
    int error;
    int outcome = ring_wait_on(self, mem, space ? space_ready : data_ready, need,
                               space ? OFF_SPACE_BELL : OFF_DATA_BELL, spin, sleep, &error);
    PyBuffer_Release(&view);
    if (error) {
        errno = error;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(outcome);
}

static PyObject *
ring_wait_data(Ring *self, PyObject *const *args, Py_ssize_t nargs)
{
    return ring_wait_common(self, args, nargs, 0);
}

static PyObject *
ring_wait_space(Ring *self, PyObject *const *args, Py_ssize_t nargs)
{
    return ring_wait_common(self, args, nargs, 1);
}

/* Ring.pending() -> int: bytes written and not yet consumed (modulo 2**64, as stored). */
static PyObject *
ring_pending(Ring *self, PyObject *unused)
{
    Py_buffer view;
    char *mem = ring_enter(self, &view);
    if (mem == NULL) {
        return NULL;
    }
    uint64_t used = atomic_load_explicit(HEAD_WORD(mem), memory_order_acquire)
                    - atomic_load_explicit(TAIL_WORD(mem), memory_order_acquire);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(used);
}

/* Ring.readable() -> bool: a message (or a closed end) is there for the consumer. */
static PyObject *
ring_readable(Ring *self, PyObject *unused)
{
    Py_buffer view;
    char *mem = ring_enter(self, &view);
    if (mem == NULL) {
        return NULL;
    }
    int r = data_ready(self, mem, 0);
    PyBuffer_Release(&view);
    return PyBool_FromLong(r);
}

static PyMethodDef ring_methods[] = {
    {"put", (PyCFunction)(void (*)(void))ring_put, METH_FASTCALL,
     "put(data, tag) -> int: 0 once sent; else the bytes needed that are not free yet"},
    {"peek", (PyCFunction)ring_peek, METH_NOARGS,
     "peek() -> memoryview | None: the next message, kept until pop(); None when empty"},
    {"pop", (PyCFunction)ring_pop, METH_NOARGS, "pop(): consume the message the last peek returned"},
    {"get", (PyCFunction)ring_get, METH_NOARGS, "get() -> bytes | None: a copy of the next message, consumed"},
    {"wait_data", (PyCFunction)(void (*)(void))ring_wait_data, METH_FASTCALL,
     "wait_data(spin, sleep) -> int: spin, then one futex sleep, for a message or a closed end; "
     "1 caught by the spin, 2 after it, 0 not ready"},
    {"wait_space", (PyCFunction)(void (*)(void))ring_wait_space, METH_FASTCALL,
     "wait_space(need, spin, sleep) -> int: as wait_data, for `need` free bytes"},
    {"pending", (PyCFunction)ring_pending, METH_NOARGS, "pending() -> int: bytes not yet consumed"},
    {"readable", (PyCFunction)ring_readable, METH_NOARGS,
     "readable() -> bool: a message is waiting or an end is closed"},
    {NULL},
};

static PyMemberDef ring_members[] = {
    {"head", T_ULONGLONG, offsetof(Ring, head), 0, "the producer's count of bytes written"},
    {"tail", T_ULONGLONG, offsetof(Ring, tail), 0, "the consumer's count of bytes consumed"},
    {"tag", T_UINT, offsetof(Ring, tag), READONLY, "the tag of the message the last peek returned"},
    {"max_message", T_ULONGLONG, offsetof(Ring, max_message), READONLY, "the largest message"},
    {"spun", T_ULONGLONG, offsetof(Ring, spun), READONLY, "waits the spin caught"},
    {"slept", T_ULONGLONG, offsetof(Ring, slept), READONLY, "futex sleeps"},
    {NULL},
};

PyTypeObject RingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "rlmesh._native.Ring",
    .tp_doc = "Ring(buf, offset, capacity, corrupt): one end of a shared-memory message ring.",
    .tp_basicsize = sizeof(Ring),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)ring_init,
    .tp_dealloc = (destructor)ring_dealloc,
    .tp_methods = ring_methods,
    .tp_members = ring_members,
};

/* ---- wait_words: a wait on conditions over u32 words, for the vector fast path ------------- */

/* One term of a wait_words condition: the u32 at `offset` equals (op 0) or differs from
 * (op 1) `value`. Terms of one group are alternatives; every group must hold. */
typedef struct {
    uint32_t offset, op, value, group;
} WordTerm;

#define WAIT_WORDS_MAX 256

static int
words_ready(const char *mem, const WordTerm *terms, Py_ssize_t count)
{
    Py_ssize_t i = 0;
    while (i < count) {
        uint32_t group = terms[i].group;
        int holds = 0;
        for (; i < count && terms[i].group == group; i++) {
            if (holds) {
                continue;
            }
            uint32_t v = atomic_load_explicit(U32_AT(mem, terms[i].offset), memory_order_acquire);
            holds = terms[i].op ? v != terms[i].value : v == terms[i].value;
        }
        if (!holds) {
            return 0;
        }
    }
    return 1;
}

/* The terms of one wait_words call, as spin_then_sleep polls them. */
typedef struct {
    const char *mem;
    const WordTerm *terms;
    Py_ssize_t count;
} WordsReady;

static int
words_ready_ctx(void *ctx)
{
    WordsReady *w = (WordsReady *)ctx;
    return words_ready(w->mem, w->terms, w->count);
}

PyDoc_STRVAR(wait_words_doc,
"wait_words(buf, terms, bell, spin, sleep) -> int\n\n"
"Wait until a condition over u32 words of buf (a writable buffer) holds: terms is a\n"
"bytes-like of little-endian u32 quads (offset, op, value, group), op 0 for 'the word\n"
"at offset equals value' and 1 for 'differs'; a group holds when any of its terms does,\n"
"the condition when every group does (terms of a group are contiguous). Spins up to\n"
"spin seconds (pausing, and yielding the core every 64 polls), then, if sleep > 0,\n"
"flags the doorbell at offset bell (u32 seq, u32 waiting) and sleeps on its futex at\n"
"most sleep seconds, once. The GIL is released throughout. Returns 1 when the spin\n"
"caught the condition, 2 when it held after the spin (or at the one look when\n"
"neither spin nor sleep), 0 when it does not hold. Raises ValueError for a term or\n"
"doorbell outside the buffer or misaligned, more than 256 terms, or a negative spin\n"
"or sleep; OSError for a failed futex call.");

static PyObject *
native_wait_words(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "wait_words(buf, terms, bell, spin, sleep)");
        return NULL;
    }
    Py_ssize_t bell = PyLong_AsSsize_t(args[2]);
    if (bell == -1 && PyErr_Occurred()) {
        return NULL;
    }
    double spin = PyFloat_AsDouble(args[3]);
    double sleep = PyFloat_AsDouble(args[4]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (!(spin >= 0) || !(sleep >= 0)) {
        PyErr_SetString(PyExc_ValueError, "spin and sleep must be >= 0 seconds");
        return NULL;
    }
    WordTerm terms[WAIT_WORDS_MAX];
    Py_buffer tv;
    if (PyObject_GetBuffer(args[1], &tv, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (tv.len % (Py_ssize_t)sizeof(WordTerm) || tv.len > (Py_ssize_t)sizeof(terms)) {
        PyBuffer_Release(&tv);
        PyErr_SetString(PyExc_ValueError, "terms must be at most 256 u32 quads");
        return NULL;
    }
    Py_ssize_t count = tv.len / (Py_ssize_t)sizeof(WordTerm);
    memcpy(terms, tv.buf, (size_t)tv.len);
    PyBuffer_Release(&tv);
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    char *mem = (char *)view.buf;
    int bad = ((uintptr_t)mem & 3) || bell < 0 || bell % 4 || bell > view.len - 8;
    for (Py_ssize_t i = 0; i < count && !bad; i++) {
        bad = terms[i].offset % 4 || (Py_ssize_t)terms[i].offset > view.len - 4 || terms[i].op > 1;
    }
    if (bad) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "a wait_words term or doorbell lies outside the buffer");
        return NULL;
    }
    WordsReady ctx = {mem, terms, count};
    int outcome, error;
    Py_BEGIN_ALLOW_THREADS
    outcome = spin_then_sleep(words_ready_ctx, &ctx, mem, bell, spin, sleep, NULL, &error);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (error) {
        errno = error;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(outcome);
}

PyDoc_STRVAR(bell_ring_doc,
"bell_ring(buf, offset)\n\n"
"Ring the doorbell at offset of buf (a writable buffer; u32 seq, u32 waiting): an\n"
"atomic increment of seq (so rings from several processes are never lost), a full\n"
"fence, and a futex wake when the waiter flagged that it may be asleep. Raises\n"
"ValueError for a doorbell outside the buffer or misaligned.");

static PyObject *
native_bell_ring(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "bell_ring(buf, offset)");
        return NULL;
    }
    Py_ssize_t offset = PyLong_AsSsize_t(args[1]);
    if (offset == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    char *mem = (char *)view.buf;
    if (((uintptr_t)mem & 3) || offset < 0 || offset % 4 || offset > view.len - 8) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "the doorbell lies outside the buffer");
        return NULL;
    }
    a32 *seq = U32_AT(mem, offset), *waiting = U32_AT(mem, offset + 4);
    atomic_fetch_add_explicit(seq, 1, memory_order_seq_cst);
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(waiting, memory_order_relaxed)) {
        futex_wake_one(seq, 1);
    }
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}


/* ---- the vector worker's step loop ------------------------------------------------------------- */

/* step_lanes' outcomes (its second result). */
enum { LANES_DONE = 0, LANES_STEP = 1, LANES_RESET = 2, LANES_ERROR = 3, LANES_PYTHON = 4 };

PyDoc_STRVAR(step_lanes_doc,
"step_lanes(envs, autoreset, last_obs, actions, lo, first, buf, obs_at, obs_nbytes, obs_format,\n"
"           obs_shape, rewards_at, terminated_at, truncated_at, mode) -> (j, outcome, value)\n\n"
"The vector worker's loop over its lanes j = first, first + 1, ... (every lane of the group\n"
"commanded; one scalar action leaf, one observation leaf at the root), as the worker's\n"
"Python loop does it: lane j steps envs[j] with actions[lo + j] (or, under NextStep with\n"
"autoreset[j] set, resets it), then, when the result needs nothing more (an info that is\n"
"None or an empty dict; an observation exporting a C-contiguous buffer of exactly\n"
"obs_format and obs_shape; no SameStep end), writes the observation (obs_nbytes at\n"
"obs_at + j * obs_nbytes), float(reward) as f64 at rewards_at + 8j, bool(terminated) and\n"
"bool(truncated) as bytes at terminated_at + j and truncated_at + j, sets autoreset[j] and\n"
"last_obs[j], and goes on. mode: 0 NextStep, 1 SameStep, 2 Disabled. Returns at the\n"
"first lane it cannot finish: (j, 1, the step's 5-tuple) or (j, 2, the reset's 2-tuple)\n"
"for the caller to finish; (j, 3, exception) when the env (or a conversion) raised;\n"
"(j, 4, None) for a Disabled lane whose episode ended (nothing called); (len(envs), 0,\n"
"None) when every lane is done. Raises ValueError for offsets outside buf, TypeError for\n"
"arguments of the wrong kind.");

static PyObject *
lanes_outcome(Py_ssize_t j, int outcome, PyObject *value)
{
    /* Steals value (NULL: None). */
    PyObject *out = Py_BuildValue("(niO)", j, outcome, value != NULL ? value : Py_None);
    Py_XDECREF(value);
    return out;
}

static PyObject *
lanes_error(Py_ssize_t j)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value == NULL) {
        Py_XDECREF(type);
        Py_XDECREF(tb);
        PyErr_SetString(PyExc_SystemError, "step_lanes: an error without an exception");
        return NULL;
    }
    if (tb != NULL) {
        PyException_SetTraceback(value, tb);
    }
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return lanes_outcome(j, LANES_ERROR, value);
}

/* 1 when obs is a C-contiguous buffer of `format` and `shape` (copied to dst), 0 when not
 * (nothing copied, no error set). */
static int
lanes_copy_obs(PyObject *obs, char *dst, Py_ssize_t nbytes, const char *format, PyObject *shape)
{
    if (!PyObject_CheckBuffer(obs)) {
        return 0;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(obs, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        PyErr_Clear();
        return 0;
    }
    int ok = view.len == nbytes && view.ndim == PyTuple_GET_SIZE(shape)
             && strcmp(view.format != NULL ? view.format : "B", format) == 0;
    for (Py_ssize_t d = 0; ok && d < view.ndim; d++) {
        ok = view.shape != NULL && view.shape[d] == PyLong_AsSsize_t(PyTuple_GET_ITEM(shape, d));
    }
    if (ok) {
        memcpy(dst, view.buf, (size_t)nbytes);
    }
    PyBuffer_Release(&view);
    return ok;
}

static PyObject *
native_step_lanes(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 15) {
        PyErr_SetString(PyExc_TypeError,
                        "step_lanes(envs, autoreset, last_obs, actions, lo, first, buf, obs_at, obs_nbytes, "
                        "obs_format, obs_shape, rewards_at, terminated_at, truncated_at, mode)");
        return NULL;
    }
    PyObject *envs = args[0], *autoreset = args[1], *last_obs = args[2], *actions = args[3];
    if (!PyList_CheckExact(envs) || !PyList_CheckExact(autoreset) || !PyList_CheckExact(last_obs)
        || !PyUnicode_Check(args[9]) || !PyTuple_CheckExact(args[10])) {
        PyErr_SetString(PyExc_TypeError, "step_lanes: envs, autoreset and last_obs must be lists, "
                                         "obs_format a str and obs_shape a tuple");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(envs);
    if (PyList_GET_SIZE(autoreset) != count || PyList_GET_SIZE(last_obs) != count) {
        PyErr_SetString(PyExc_ValueError, "step_lanes: envs, autoreset and last_obs differ in length");
        return NULL;
    }
    Py_ssize_t lo = PyLong_AsSsize_t(args[4]), first = PyLong_AsSsize_t(args[5]);
    Py_ssize_t obs_at = PyLong_AsSsize_t(args[7]), obs_nbytes = PyLong_AsSsize_t(args[8]);
    Py_ssize_t rewards_at = PyLong_AsSsize_t(args[11]), terms_at = PyLong_AsSsize_t(args[12]);
    Py_ssize_t truncs_at = PyLong_AsSsize_t(args[13]);
    long mode = PyLong_AsLong(args[14]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    const char *format = PyUnicode_AsUTF8(args[9]);
    if (format == NULL) {
        return NULL;
    }
    PyObject *shape = args[10];
    Py_buffer mem;
    if (PyObject_GetBuffer(args[6], &mem, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    /* Every lane's fields must lie inside the buffer. */
    if (first < 0 || lo < 0 || obs_nbytes < 0 || obs_at < 0 || rewards_at < 0 || terms_at < 0 || truncs_at < 0
        || (count && (obs_at > mem.len || obs_nbytes > (mem.len - obs_at) / count || rewards_at > mem.len - 8 * count
                      || terms_at > mem.len - count || truncs_at > mem.len - count))) {
        PyBuffer_Release(&mem);
        PyErr_SetString(PyExc_ValueError, "step_lanes: a field lies outside the buffer");
        return NULL;
    }
    char *base = (char *)mem.buf;
    PyObject *out = NULL;
    PyObject *step_name = PyUnicode_InternFromString("step");
    PyObject *reset_name = PyUnicode_InternFromString("reset");
    if (step_name == NULL || reset_name == NULL) {
        goto done;
    }
    Py_ssize_t j = first;
    for (; j < count; j++) {
        PyObject *env = PyList_GET_ITEM(envs, j);
        int ended = PyObject_IsTrue(PyList_GET_ITEM(autoreset, j));
        if (ended < 0) {
            out = lanes_error(j);
            goto done;
        }
        PyObject *result, *obs, *info, *reward = NULL;
        int reset = ended && mode == 0;
        if (ended && mode == 2) {
            out = lanes_outcome(j, LANES_PYTHON, NULL);
            goto done;
        }
        if (reset) {
            result = PyObject_CallMethodNoArgs(env, reset_name);
        }
        else {
            PyObject *index = PyLong_FromSsize_t(lo + j);
            PyObject *action = index != NULL ? PyObject_GetItem(actions, index) : NULL;
            Py_XDECREF(index);
            result = action != NULL ? PyObject_CallMethodOneArg(env, step_name, action) : NULL;
            Py_XDECREF(action);
        }
        if (result == NULL) {
            out = lanes_error(j);
            goto done;
        }
        if (!PyTuple_CheckExact(result) || PyTuple_GET_SIZE(result) != (reset ? 2 : 5)) {
            /* Not the usual tuple: the caller unpacks it (and raises as Python does). */
            out = lanes_outcome(j, reset ? LANES_RESET : LANES_STEP, result);
            goto done;
        }
        obs = PyTuple_GET_ITEM(result, 0);
        info = PyTuple_GET_ITEM(result, reset ? 1 : 4);
        if (info != Py_None && !(PyDict_Check(info) && PyDict_GET_SIZE(info) == 0)) {
            out = lanes_outcome(j, reset ? LANES_RESET : LANES_STEP, result);
            goto done;
        }
        double value = 0.0;
        int term = 0, trunc = 0;
        if (!reset) {
            reward = PyNumber_Float(PyTuple_GET_ITEM(result, 1));
            if (reward == NULL) {
                Py_DECREF(result);
                out = lanes_error(j);
                goto done;
            }
            value = PyFloat_AS_DOUBLE(reward);
            Py_DECREF(reward);
            term = PyObject_IsTrue(PyTuple_GET_ITEM(result, 2));
            trunc = term < 0 ? -1 : PyObject_IsTrue(PyTuple_GET_ITEM(result, 3));
            if (term < 0 || trunc < 0) {
                Py_DECREF(result);
                out = lanes_error(j);
                goto done;
            }
            if (mode == 1 && (term || trunc)) {
                out = lanes_outcome(j, LANES_STEP, result); /* SameStep's reset and final obs */
                goto done;
            }
        }
        if (!lanes_copy_obs(obs, base + obs_at + j * obs_nbytes, obs_nbytes, format, shape)) {
            if (PyErr_Occurred()) {
                Py_DECREF(result);
                out = lanes_error(j);
                goto done;
            }
            out = lanes_outcome(j, reset ? LANES_RESET : LANES_STEP, result);
            goto done;
        }
        memcpy(base + rewards_at + 8 * j, &value, 8);
        base[terms_at + j] = (char)term;
        base[truncs_at + j] = (char)trunc;
        PyObject *flag = (term || trunc) ? Py_True : Py_False;
        Py_INCREF(flag);
        PyList_SetItem(autoreset, j, flag);
        Py_INCREF(obs);
        PyList_SetItem(last_obs, j, obs);
        Py_DECREF(result);
    }
    out = lanes_outcome(count, LANES_DONE, NULL);
done:
    Py_XDECREF(step_name);
    Py_XDECREF(reset_name);
    PyBuffer_Release(&mem);
    return out;
}

static PyMethodDef ring_module_methods[] = {
    {"futex_wait", (PyCFunction)(void (*)(void))native_futex_wait, METH_FASTCALL, futex_wait_doc},
    {"futex_wake", (PyCFunction)(void (*)(void))native_futex_wake, METH_FASTCALL, futex_wake_doc},
    {"sched_yield", native_sched_yield, METH_NOARGS, "sched_yield(): give the core to another runnable task"},
    {"wait_words", (PyCFunction)(void (*)(void))native_wait_words, METH_FASTCALL, wait_words_doc},
    {"bell_ring", (PyCFunction)(void (*)(void))native_bell_ring, METH_FASTCALL, bell_ring_doc},
    {"step_lanes", (PyCFunction)(void (*)(void))native_step_lanes, METH_FASTCALL, step_lanes_doc},
    {NULL},
};

/* Called once from PyInit__native (in _native.c). */
int
rlmesh_native_ring_init(PyObject *module)
{
    if (PyType_Ready(&RingType) < 0) {
        return -1;
    }
    Py_INCREF(&RingType);
    if (PyModule_AddObject(module, "Ring", (PyObject *)&RingType) < 0) {
        Py_DECREF(&RingType);
        return -1;
    }
    return PyModule_AddFunctions(module, ring_module_methods);
}
