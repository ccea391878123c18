/*
 * rlmesh._native: what _native_ring.c shares with the other per-step code
 * (_native_step.c, the fixed-shape step codec): the ring's control block
 * layout, the Ring object, and the helpers that enter, read and advance it.
 */
#ifndef RLMESH_NATIVE_RING_H
#define RLMESH_NATIVE_RING_H

#include <Python.h>
#include <stdatomic.h>
#include <stdint.h>

/* The control block (see ring.py): one cache line per field group. */
#define LINE 64
#define OFF_HEAD 0
#define OFF_TAIL LINE
#define OFF_DATA_BELL (2 * LINE)
#define OFF_SPACE_BELL (3 * LINE)
#define OFF_PRODUCER_CLOSED (4 * LINE)
#define OFF_CONSUMER_CLOSED (4 * LINE + 4)
#define CONTROL (5 * LINE)
#define RECORD 8
#define WRAP 0xFFFFFFFFu

typedef _Atomic uint64_t a64;
typedef _Atomic uint32_t a32;

#define PAD8(n) (((uint64_t)(n) + 7) & ~(uint64_t)7)

typedef struct {
    PyObject_HEAD
    PyObject *buf;     /* the writable memoryview holding the ring */
    PyObject *corrupt; /* the exception class for a record that breaks the layout */
    Py_ssize_t base;   /* the control block's offset in buf */
    uint64_t capacity, mask, max_message;
    uint64_t head;     /* producer: bytes written (its own counter) */
    uint64_t tail;     /* consumer: bytes consumed (its own); producer: the last it read */
    uint64_t peeked;   /* bytes the peeked record spans (header and padding), 0: none */
    uint32_t tag;      /* the tag of the record the last peek returned */
    unsigned long long spun, slept; /* waits the spin caught; futex sleeps */
} Ring;

#define HEAD_WORD(m) ((a64 *)((m) + OFF_HEAD))
#define TAIL_WORD(m) ((a64 *)((m) + OFF_TAIL))
#define U32_AT(m, off) ((a32 *)((m) + (off)))

extern PyTypeObject RingType;

/* The ring's memory for one call: its control block, or NULL with an error set. */
char *ring_enter(Ring *self, Py_buffer *view);
/* Set the ring's corrupt error ("corrupt ring: <what>") and return NULL. */
PyObject *ring_corrupt(Ring *self, const char *what);
/* The consumer's next record: 1 found, 0 empty, -1 corrupt (error set). */
int ring_locate(Ring *self, char *mem, uint64_t *pos_out, uint64_t *n_out, uint32_t *tag_out);
/* The producer's room for an n-byte record: 1 reserved at *pos, 0 full (*need set), -1 corrupt. */
int ring_reserve(Ring *self, char *mem, uint64_t n, uint64_t *pos_out, uint64_t *need_out);
/* Publish the n-byte record reserved at `pos` (payload written) and ring the consumer. */
void ring_publish(Ring *self, char *mem, uint64_t pos, uint64_t n, uint32_t tag);
/* Publish the consumer's tail past `span` bytes; wake a producer waiting for room. */
void ring_advance(Ring *self, char *mem, uint64_t span);

#endif
