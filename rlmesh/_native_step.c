/*
 * rlmesh._native, part three: the fixed-shape step codec.
 *
 * On a shared-memory session whose contract has a fixed-shape action (a
 * Discrete, or one tensor leaf) and a small fixed-shape observation (one
 * tensor leaf under SHM_INLINE_LIMIT, or a Discrete), and when both sides
 * said so in the handshake, a STEP and its OK travel as *compact records*
 * instead of msgpack: ring records tagged STEP_RECORD_TAG (0xFFFFFFFE, next to
 * RingChannel's SPILL tag 0xFFFFFFFF), written and read here straight in the
 * ring's memory, with no intermediate bytes object. The direction says which
 * kind a compact record is: the request ring carries steps, the response ring
 * their OKs. Payloads (little-endian, the record's payload starts 8-byte aligned):
 *
 *   step  (client -> server):  u64 request id, then the action: exactly the
 *                              contract's action bytes (a Discrete: i64).
 *   ok    (server -> client):  u64 request id, f64 reward, u8 flags (bit 0
 *                              terminated, bit 1 truncated; no other bit),
 *                              7 zero bytes, then the observation: exactly the
 *                              contract's observation bytes (a Discrete: i64).
 *
 * Anything else (a reset, an ERROR, a step with pending lease releases, an OK
 * whose info is not empty...) stays a msgpack message in the same rings; a
 * receiver reads a compact record only when it is the next one, else it
 * leaves the record for the msgpack path.
 *
 * The peer is not trusted: a compact record whose length is not the
 * contract's exact size, or whose flags or padding are not as above, raises
 * the ring's corrupt error (BrokenError) and is not consumed; nothing is read
 * outside the record (ring_locate bounds it against the ring first).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "_native_ring.h"

#define STEP_RECORD_TAG 0xFFFFFFFEu
#define STEP_HEAD 8u /* u64 rid */
#define OK_HEAD 24u  /* u64 rid, f64 reward, u8 flags, 7 zero bytes */

/* The Ring argument, checked; NULL with TypeError otherwise. */
static Ring *
ring_arg(PyObject *obj)
{
    if (!PyObject_TypeCheck(obj, &RingType)) {
        PyErr_Format(PyExc_TypeError, "expected an rlmesh._native.Ring, got %.200s", Py_TYPE(obj)->tp_name);
        return NULL;
    }
    return (Ring *)obj;
}

/* A size argument: an int in [0, max_message - head]. -1 with an error set otherwise. */
static int64_t
size_arg(Ring *ring, PyObject *obj, uint64_t head)
{
    unsigned long long n = PyLong_AsUnsignedLongLong(obj);
    if (n == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    /* Compared without adding, so no size wraps past the limit. */
    if (head > ring->max_message || n > ring->max_message - head) {
        PyErr_Format(PyExc_ValueError,
                     "a compact record of %llu payload bytes (and a %llu-byte head) exceeds this ring's "
                     "limit of %llu bytes",
                     n, (unsigned long long)head, (unsigned long long)ring->max_message);
        return -1;
    }
    return (int64_t)n;
}

/* The value's bytes: an int as i64 (nbytes must be 8) or a C-contiguous buffer of exactly nbytes.
 * 0 done (buffer held in *view if *held), -1 error set. */
static int
value_bytes(PyObject *value, uint64_t nbytes, int64_t *number, Py_buffer *view, int *held, const char *what)
{
    *held = 0;
    if (PyLong_CheckExact(value)) {
        if (nbytes != 8) {
            PyErr_Format(PyExc_ValueError, "an int %s needs an 8-byte record, this one has %llu", what,
                         (unsigned long long)nbytes);
            return -1;
        }
        long long v = PyLong_AsLongLong(value);
        if (v == -1 && PyErr_Occurred()) {
            return -1;
        }
        *number = (int64_t)v;
        return 0;
    }
    if (PyObject_GetBuffer(value, view, PyBUF_C_CONTIGUOUS) < 0) {
        return -1;
    }
    *held = 1;
    if ((uint64_t)view->len != nbytes) {
        PyErr_Format(PyExc_ValueError, "a %zd-byte %s, the contract's is %llu bytes", view->len, what,
                     (unsigned long long)nbytes);
        PyBuffer_Release(view);
        *held = 0;
        return -1;
    }
    return 0;
}

/* Write a compact record: head (hlen bytes) then the value; 0 sent, >0 the room needed, -1 error. */
static PyObject *
put_record(Ring *ring, const unsigned char *head, uint64_t hlen, PyObject *value, uint64_t nbytes,
           const char *what)
{
    int64_t number = 0;
    Py_buffer data;
    int held;
    if (value_bytes(value, nbytes, &number, &data, &held, what) < 0) {
        return NULL;
    }
    Py_buffer view;
    char *mem = ring_enter(ring, &view);
    if (mem == NULL) {
        if (held) {
            PyBuffer_Release(&data);
        }
        return NULL;
    }
    uint64_t n = hlen + nbytes, pos = 0, need = 0;
    PyObject *result = NULL;
    int reserved = ring_reserve(ring, mem, n, &pos, &need);
    if (reserved > 0) {
        char *payload = mem + CONTROL + pos + RECORD;
        memcpy(payload, head, (size_t)hlen);
        if (held) {
            /* memmove: the value may be a view of this very segment. */
            memmove(payload + hlen, data.buf, (size_t)nbytes);
        }
        else {
            memcpy(payload + hlen, &number, 8);
        }
        ring_publish(ring, mem, pos, n, STEP_RECORD_TAG);
        result = PyLong_FromLong(0);
    }
    else if (reserved == 0) {
        result = PyLong_FromUnsignedLongLong(need);
    }
    PyBuffer_Release(&view);
    if (held) {
        PyBuffer_Release(&data);
    }
    return result;
}

PyDoc_STRVAR(step_send_doc,
             "step_send(ring, rid, action, nbytes) -> int: write a compact STEP record.\n\n"
             "``action`` is an int (a Discrete, written as i64; nbytes must be 8) or a buffer of exactly\n"
             "``nbytes`` bytes. Returns 0 once sent and the consumer rung, else the bytes of room it\n"
             "needs (nothing written). Raises ValueError (wrong size), OverflowError (an int beyond\n"
             "i64), the ring's corrupt error, ValueError for a released ring memory.");

static PyObject *
native_step_send(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "step_send(ring, rid, action, nbytes)");
        return NULL;
    }
    Ring *ring = ring_arg(args[0]);
    if (ring == NULL) {
        return NULL;
    }
    unsigned long long rid = PyLong_AsUnsignedLongLong(args[1]);
    if (rid == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    int64_t nbytes = size_arg(ring, args[3], STEP_HEAD);
    if (nbytes < 0) {
        return NULL;
    }
    uint64_t r = rid;
    unsigned char head[STEP_HEAD];
    memcpy(head, &r, 8);
    return put_record(ring, head, STEP_HEAD, args[2], (uint64_t)nbytes, "action");
}

PyDoc_STRVAR(ok_send_doc,
             "ok_send(ring, rid, reward, terminated, truncated, obs, nbytes) -> int: write a compact OK.\n\n"
             "``obs`` is an int (a Discrete, as i64; nbytes must be 8) or a buffer of exactly ``nbytes``\n"
             "bytes. Returns as step_send; raises as step_send, TypeError for a reward that is no number.");

static PyObject *
native_ok_send(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "ok_send(ring, rid, reward, terminated, truncated, obs, nbytes)");
        return NULL;
    }
    Ring *ring = ring_arg(args[0]);
    if (ring == NULL) {
        return NULL;
    }
    unsigned long long rid = PyLong_AsUnsignedLongLong(args[1]);
    if (rid == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    double reward = PyFloat_AsDouble(args[2]);
    if (reward == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    int terminated = PyObject_IsTrue(args[3]), truncated = PyObject_IsTrue(args[4]);
    if (terminated < 0 || truncated < 0) {
        return NULL;
    }
    int64_t nbytes = size_arg(ring, args[6], OK_HEAD);
    if (nbytes < 0) {
        return NULL;
    }
    uint64_t r = rid;
    unsigned char head[OK_HEAD];
    memset(head, 0, sizeof head);
    memcpy(head, &r, 8);
    memcpy(head + 8, &reward, 8);
    head[16] = (unsigned char)(terminated | (truncated << 1));
    return put_record(ring, head, OK_HEAD, args[5], (uint64_t)nbytes, "observation");
}

/* The next record if it is a compact one of exactly hlen + nbytes bytes:
 * 1 found (*payload set), 0 the ring is empty, 2 the next record is not a
 * compact one (left in place), -1 error set (corrupt, or a released memory). */
static int
next_compact(Ring *ring, char *mem, uint64_t hlen, uint64_t nbytes, const char *what, char **payload,
             uint64_t *span)
{
    uint64_t pos, n;
    uint32_t tag;
    int found = ring_locate(ring, mem, &pos, &n, &tag);
    if (found <= 0) {
        return found;
    }
    if (tag != STEP_RECORD_TAG) {
        return 2;
    }
    if (n != hlen + nbytes) {
        PyErr_Format(ring->corrupt, "corrupt ring: a compact %s record of %llu bytes, the contract's is %llu",
                     what, (unsigned long long)n, (unsigned long long)(hlen + nbytes));
        return -1;
    }
    *payload = mem + CONTROL + pos + RECORD;
    *span = RECORD + PAD8(n);
    return 1;
}

/* The value part of a record: an i64 as int (discrete) or a new bytearray. */
static PyObject *
value_from(const char *at, uint64_t nbytes, int discrete)
{
    if (discrete) {
        int64_t v;
        memcpy(&v, at, 8);
        return PyLong_FromLongLong((long long)v);
    }
    return PyByteArray_FromStringAndSize(at, (Py_ssize_t)nbytes);
}

/* Parse (ring, nbytes, discrete) for the readers. */
static Ring *
recv_args(PyObject *const *args, Py_ssize_t nargs, uint64_t hlen, const char *usage, uint64_t *nbytes,
          int *discrete)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, usage);
        return NULL;
    }
    Ring *ring = ring_arg(args[0]);
    if (ring == NULL) {
        return NULL;
    }
    int64_t n = size_arg(ring, args[1], hlen);
    if (n < 0) {
        return NULL;
    }
    *discrete = PyObject_IsTrue(args[2]);
    if (*discrete < 0) {
        return NULL;
    }
    if (*discrete && n != 8) {
        PyErr_SetString(PyExc_ValueError, "a Discrete value takes 8 bytes");
        return NULL;
    }
    *nbytes = (uint64_t)n;
    return ring;
}

PyDoc_STRVAR(step_recv_doc,
             "step_recv(ring, nbytes, discrete) -> None | False | (rid, action): read a compact STEP.\n\n"
             "None: the ring is empty. False: the next message is not a compact record (it is left for\n"
             "the msgpack path). Else the record is consumed: the action is an int (``discrete``) or a\n"
             "new bytearray of ``nbytes``. Raises the ring's corrupt error for a compact record of\n"
             "another size (not consumed).");

static PyObject *
native_step_recv(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t nbytes;
    int discrete;
    Ring *ring = recv_args(args, nargs, STEP_HEAD, "step_recv(ring, nbytes, discrete)", &nbytes, &discrete);
    if (ring == NULL) {
        return NULL;
    }
    Py_buffer view;
    char *mem = ring_enter(ring, &view);
    if (mem == NULL) {
        return NULL;
    }
    char *payload = NULL;
    uint64_t span = 0;
    PyObject *result = NULL;
    int found = next_compact(ring, mem, STEP_HEAD, nbytes, "step", &payload, &span);
    if (found == 0) {
        result = Py_NewRef(Py_None);
    }
    else if (found == 2) {
        result = Py_NewRef(Py_False);
    }
    else if (found == 1) {
        uint64_t rid;
        memcpy(&rid, payload, 8);
        PyObject *action = value_from(payload + STEP_HEAD, nbytes, discrete);
        PyObject *id = action ? PyLong_FromUnsignedLongLong(rid) : NULL;
        if (id != NULL) {
            result = PyTuple_Pack(2, id, action);
        }
        Py_XDECREF(id);
        Py_XDECREF(action);
        if (result != NULL) {
            ring->peeked = 0;
            ring_advance(ring, mem, span);
        }
    }
    PyBuffer_Release(&view);
    return result;
}

PyDoc_STRVAR(ok_recv_doc,
             "ok_recv(ring, nbytes, discrete) -> None | False | (rid, reward, terminated, truncated, obs):\n"
             "read a compact OK.\n\n"
             "None and False as step_recv. Else the record is consumed; ``obs`` is an int (``discrete``)\n"
             "or a new bytearray of ``nbytes`` (numpy.frombuffer makes it a writable array, no copy).\n"
             "Raises the ring's corrupt error for a compact record of another size, unknown flag bits or\n"
             "non-zero padding (not consumed).");

static PyObject *
native_ok_recv(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t nbytes;
    int discrete;
    Ring *ring = recv_args(args, nargs, OK_HEAD, "ok_recv(ring, nbytes, discrete)", &nbytes, &discrete);
    if (ring == NULL) {
        return NULL;
    }
    Py_buffer view;
    char *mem = ring_enter(ring, &view);
    if (mem == NULL) {
        return NULL;
    }
    char *payload = NULL;
    uint64_t span = 0;
    PyObject *result = NULL;
    int found = next_compact(ring, mem, OK_HEAD, nbytes, "OK", &payload, &span);
    if (found == 0) {
        result = Py_NewRef(Py_None);
    }
    else if (found == 2) {
        result = Py_NewRef(Py_False);
    }
    else if (found == 1) {
        unsigned char tail[8];
        memcpy(tail, payload + 16, 8);
        uint64_t rid;
        double reward;
        memcpy(&rid, payload, 8);
        memcpy(&reward, payload + 8, 8);
        unsigned flags = tail[0];
        int padded = 0;
        for (int i = 1; i < 8; i++) {
            padded |= tail[i];
        }
        if ((flags & ~3u) || padded) {
            PyErr_Format(ring->corrupt, "corrupt ring: a compact OK record with flags 0x%02x", flags);
        }
        else {
            PyObject *obs = value_from(payload + OK_HEAD, nbytes, discrete);
            PyObject *id = obs ? PyLong_FromUnsignedLongLong(rid) : NULL;
            PyObject *value = id ? PyFloat_FromDouble(reward) : NULL;
            if (value != NULL) {
                result = PyTuple_Pack(5, id, value, (flags & 1) ? Py_True : Py_False,
                                      (flags & 2) ? Py_True : Py_False, obs);
            }
            Py_XDECREF(value);
            Py_XDECREF(id);
            Py_XDECREF(obs);
            if (result != NULL) {
                ring->peeked = 0;
                ring_advance(ring, mem, span);
            }
        }
    }
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef step_module_methods[] = {
    {"step_send", (PyCFunction)(void (*)(void))native_step_send, METH_FASTCALL, step_send_doc},
    {"step_recv", (PyCFunction)(void (*)(void))native_step_recv, METH_FASTCALL, step_recv_doc},
    {"ok_send", (PyCFunction)(void (*)(void))native_ok_send, METH_FASTCALL, ok_send_doc},
    {"ok_recv", (PyCFunction)(void (*)(void))native_ok_recv, METH_FASTCALL, ok_recv_doc},
    {NULL},
};

/* Called once from PyInit__native (in _native.c). */
int
rlmesh_native_step_init(PyObject *module)
{
    if (PyModule_AddIntConstant(module, "STEP_RECORD_TAG", (long)STEP_RECORD_TAG) < 0) {
        return -1;
    }
    return PyModule_AddFunctions(module, step_module_methods);
}
