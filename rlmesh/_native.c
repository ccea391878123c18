/*
 * rlmesh._native: what Python cannot do, or cannot do safely, for the data model.
 *
 *  - TensorBase, the base type of rlmesh.Tensor. It owns the tensor's fields and
 *    exports the buffer protocol, which a pure-Python class can only do from
 *    Python 3.12 on (PEP 688). Views are read-only, typed with the struct
 *    formats the published API lists (float16 is "e"), and keep the tensor,
 *    and so its shared-memory lease, alive.
 *  - DLPack capsules: the capsule destructor and the managed-tensor deleters.
 *    They run while a consumer may have an exception pending (numpy refusing
 *    bfloat16 drops the capsule with its error set), so they save and restore
 *    it; a Python callback cannot.
 *  - buffer_address(), the first byte of any buffer-protocol object.
 *  - memory_barrier(), a full fence for the shared-memory doorbells: Python
 *    has no atomics, and a fence must not depend on what the interpreter
 *    happens to do around a call.
 *
 *  - the per-step ring, futex doorbell and spin loop: _native_ring.c.
 *
 * Layer 1: no I/O, no state shared with other libraries (nothing is set on
 * ctypes.pythonapi). The only global is the count of live exports.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

/* ---- DLPack ABI (dlpack.h, v1.0), spelled out so no header is needed. ---- */

typedef struct {
    int32_t device_type;
    int32_t device_id;
} DLDevice;

typedef struct {
    uint8_t code;
    uint8_t bits;
    uint16_t lanes;
} DLDataType;

typedef struct {
    void *data;
    DLDevice device;
    int32_t ndim;
    DLDataType dtype;
    int64_t *shape;
    int64_t *strides;
    uint64_t byte_offset;
} DLTensor;

typedef struct DLManagedTensor {
    DLTensor dl_tensor;
    void *manager_ctx;
    void (*deleter)(struct DLManagedTensor *self);
} DLManagedTensor;

typedef struct {
    uint32_t major;
    uint32_t minor;
} DLPackVersion;

typedef struct DLManagedTensorVersioned {
    DLPackVersion version;
    void *manager_ctx;
    void (*deleter)(struct DLManagedTensorVersioned *self);
    uint64_t flags;
    DLTensor dl_tensor;
} DLManagedTensorVersioned;

#define KDL_CPU 1
#define DL_INT 0
#define DL_UINT 1
#define DL_FLOAT 2
#define DL_BFLOAT 4
#define DL_BOOL 6
#define MAX_NDIM 64

static const char NAME_LEGACY[] = "dltensor";
static const char NAME_VERSIONED[] = "dltensor_versioned";
static const char NAME_USED_LEGACY[] = "used_dltensor";
static const char NAME_USED_VERSIONED[] = "used_dltensor_versioned";

/* Exports whose deleter has not run yet; only touched with the GIL held. */
static Py_ssize_t live_exports = 0;

/* ---- helpers --------------------------------------------------------------- */

/* Read dtype.dlpack_code and dtype.itemsize of an rlmesh DType. */
static int
dtype_code_and_size(PyObject *dtype, long *code, Py_ssize_t *itemsize)
{
    PyObject *c = PyObject_GetAttrString(dtype, "dlpack_code");
    if (c == NULL) {
        return -1;
    }
    *code = PyLong_AsLong(c);
    Py_DECREF(c);
    if (*code == -1 && PyErr_Occurred()) {
        return -1;
    }
    PyObject *s = PyObject_GetAttrString(dtype, "itemsize");
    if (s == NULL) {
        return -1;
    }
    *itemsize = PyLong_AsSsize_t(s);
    Py_DECREF(s);
    if (*itemsize == -1 && PyErr_Occurred()) {
        return -1;
    }
    return 0;
}

/* The struct format of a dtype, or NULL where there is none (bfloat16). */
static const char *
struct_format(long code, Py_ssize_t itemsize)
{
    switch (code) {
    case DL_BOOL:
        return itemsize == 1 ? "?" : NULL;
    case DL_INT:
        return itemsize == 1 ? "b" : itemsize == 2 ? "h" : itemsize == 4 ? "i" : itemsize == 8 ? "q" : NULL;
    case DL_UINT:
        return itemsize == 1 ? "B" : itemsize == 2 ? "H" : itemsize == 4 ? "I" : itemsize == 8 ? "Q" : NULL;
    case DL_FLOAT:
        return itemsize == 2 ? "e" : itemsize == 4 ? "f" : itemsize == 8 ? "d" : NULL;
    default:
        return NULL;
    }
}

/* ---- TensorBase ------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *view;   /* memoryview of the bytes; its exporter keeps the memory */
    PyObject *shape;  /* tuple of ints (an rlmesh Shape) */
    PyObject *dtype;  /* rlmesh DType */
    PyObject *owner;  /* whatever keeps the memory valid (a lease, a bytearray) */
    unsigned long long address;
    PyObject *weakreflist;
} TensorBase;

static int
base_traverse(TensorBase *self, visitproc visit, void *arg)
{
    Py_VISIT(self->view);
    Py_VISIT(self->shape);
    Py_VISIT(self->dtype);
    Py_VISIT(self->owner);
    return 0;
}

static int
base_clear(TensorBase *self)
{
    /* The view goes before the owner: a view over a lease must be released
     * while the lease still holds the mapping. */
    Py_CLEAR(self->view);
    Py_CLEAR(self->shape);
    Py_CLEAR(self->dtype);
    Py_CLEAR(self->owner);
    return 0;
}

static void
base_dealloc(TensorBase *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    base_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* TensorBase._from_parts(view, shape, dtype, owner, address): a tensor with its
 * fields set, unvalidated (for callers that checked the sizes already). */
static PyObject *
base_from_parts(PyObject *cls, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError, "_from_parts() takes 5 arguments (%zd given)", nargs);
        return NULL;
    }
    unsigned long long address = PyLong_AsUnsignedLongLong(args[4]);
    if (address == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    TensorBase *self = (TensorBase *)((PyTypeObject *)cls)->tp_alloc((PyTypeObject *)cls, 0);
    if (self == NULL) {
        return NULL;
    }
    Py_INCREF(args[0]);
    self->view = args[0];
    Py_INCREF(args[1]);
    self->shape = args[1];
    Py_INCREF(args[2]);
    self->dtype = args[2];
    Py_INCREF(args[3]);
    self->owner = args[3];
    self->address = address;
    return (PyObject *)self;
}

/* The contiguity a buffer request demands that a C-contiguous block may lack. */
static int
fortran_ok(PyObject *shape)
{
    Py_ssize_t ndim = PyTuple_GET_SIZE(shape), big = 0;
    for (Py_ssize_t i = 0; i < ndim; i++) {
        Py_ssize_t d = PyLong_AsSsize_t(PyTuple_GET_ITEM(shape, i));
        if (d == 0) {
            return 1;
        }
        if (d > 1) {
            big++;
        }
    }
    return big <= 1;
}

static char empty_block[1];

static int
base_getbuffer(TensorBase *self, Py_buffer *view, int flags)
{
    view->obj = NULL;
    if (flags & PyBUF_WRITABLE) {
        PyErr_SetString(PyExc_BufferError, "rlmesh tensors are read-only; copy one to write to it");
        return -1;
    }
    if (self->shape == NULL || self->dtype == NULL || !PyTuple_Check(self->shape)) {
        PyErr_SetString(PyExc_BufferError, "tensor is not initialised");
        return -1;
    }
    long code;
    Py_ssize_t itemsize;
    if (dtype_code_and_size(self->dtype, &code, &itemsize) < 0) {
        return -1;
    }
    const char *format = struct_format(code, itemsize);
    if (format == NULL) {
        PyErr_SetString(PyExc_BufferError,
                        "bfloat16 has no buffer-protocol format; use numpy.from_dlpack(tensor), "
                        "rlmesh.numpy.asarray(tensor) (needs ml_dtypes) or tensor.buffer (raw 16-bit words)");
        return -1;
    }
    Py_ssize_t ndim = PyTuple_GET_SIZE(self->shape);
    if (ndim > MAX_NDIM) {
        PyErr_Format(PyExc_BufferError, "a buffer has at most %d dimensions, this tensor has %zd",
                     MAX_NDIM, ndim);
        return -1;
    }
    if ((flags & PyBUF_F_CONTIGUOUS) == PyBUF_F_CONTIGUOUS
        && (flags & PyBUF_ANY_CONTIGUOUS) != PyBUF_ANY_CONTIGUOUS && !fortran_ok(self->shape)) {
        PyErr_SetString(PyExc_BufferError, "rlmesh tensors are C-contiguous, not Fortran-contiguous");
        return -1;
    }
    Py_ssize_t *dims = NULL;
    Py_ssize_t count = 1;
    if (ndim > 0) {
        dims = PyMem_Malloc(sizeof(Py_ssize_t) * 2 * (size_t)ndim);
        if (dims == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < ndim; i++) {
            dims[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(self->shape, i));
            if (dims[i] < 0) {
                PyMem_Free(dims);
                if (!PyErr_Occurred()) {
                    PyErr_SetString(PyExc_BufferError, "tensor has a negative dimension");
                }
                return -1;
            }
            count *= dims[i];
        }
        Py_ssize_t stride = itemsize;
        for (Py_ssize_t i = ndim - 1; i >= 0; i--) {
            dims[ndim + i] = stride;
            stride *= dims[i] > 1 ? dims[i] : 1;
        }
    }
    view->buf = self->address ? (void *)(uintptr_t)self->address : (void *)empty_block;
    view->len = count * itemsize;
    view->readonly = 1;
    view->suboffsets = NULL;
    view->internal = dims;
    if (flags & PyBUF_ND) {
        view->itemsize = itemsize;
        view->format = (flags & PyBUF_FORMAT) ? (char *)format : NULL;
        view->ndim = (int)ndim;
        view->shape = dims;
        view->strides = ((flags & PyBUF_STRIDES) == PyBUF_STRIDES && dims) ? dims + ndim : NULL;
    }
    else {
        /* A simple request sees plain bytes (PyBuffer_FillInfo does the same). */
        view->itemsize = 1;
        view->format = (flags & PyBUF_FORMAT) ? "B" : NULL;
        view->ndim = 1;
        view->shape = NULL;
        view->strides = NULL;
    }
    Py_INCREF(self);
    view->obj = (PyObject *)self;
    return 0;
}

static void
base_releasebuffer(TensorBase *self, Py_buffer *view)
{
    PyMem_Free(view->internal);
    view->internal = NULL;
}

static PyBufferProcs base_as_buffer = {
    .bf_getbuffer = (getbufferproc)base_getbuffer,
    .bf_releasebuffer = (releasebufferproc)base_releasebuffer,
};

static PyMemberDef base_members[] = {
    {"_view", T_OBJECT_EX, offsetof(TensorBase, view), 0, "the bytes, as a flat memoryview"},
    {"_shape", T_OBJECT_EX, offsetof(TensorBase, shape), 0, "the dimensions"},
    {"_dtype", T_OBJECT_EX, offsetof(TensorBase, dtype), 0, "the rlmesh DType"},
    {"_owner", T_OBJECT_EX, offsetof(TensorBase, owner), 0, "what keeps the memory valid"},
    {"_address", T_ULONGLONG, offsetof(TensorBase, address), 0, "the first byte's address"},
    {NULL},
};

static PyMethodDef base_methods[] = {
    {"_from_parts", (PyCFunction)(void (*)(void))base_from_parts, METH_FASTCALL | METH_CLASS,
     "_from_parts(view, shape, dtype, owner, address) -> tensor, unvalidated"},
    {NULL},
};

static PyTypeObject TensorBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "rlmesh._native.TensorBase",
    .tp_doc = "The native base of rlmesh.Tensor: its fields and the buffer protocol.",
    .tp_basicsize = sizeof(TensorBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)base_dealloc,
    .tp_traverse = (traverseproc)base_traverse,
    .tp_clear = (inquiry)base_clear,
    .tp_as_buffer = &base_as_buffer,
    .tp_members = base_members,
    .tp_methods = base_methods,
    .tp_weaklistoffset = offsetof(TensorBase, weakreflist),
};

/* ---- DLPack export ---------------------------------------------------------- */

/* One allocation per export: both struct flavours, the owner, shape and strides. */
typedef struct {
    DLManagedTensor legacy;
    DLManagedTensorVersioned versioned;
    PyObject *owner;
    int64_t dims[]; /* shape, then strides (in elements) */
} Export;

static void
export_free(Export *export)
{
    if (!Py_IsInitialized()) {
        return; /* the interpreter is gone: leaking is the only safe choice */
    }
    /* A consumer may call a deleter from any thread, with or without the GIL,
     * and with an exception pending. */
    PyGILState_STATE state = PyGILState_Ensure();
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    Py_XDECREF(export->owner);
    live_exports--;
    PyMem_RawFree(export);
    PyErr_Restore(type, value, traceback);
    PyGILState_Release(state);
}

static void
delete_legacy(DLManagedTensor *managed)
{
    export_free((Export *)managed->manager_ctx);
}

static void
delete_versioned(DLManagedTensorVersioned *managed)
{
    export_free((Export *)managed->manager_ctx);
}

static void
capsule_destructor(PyObject *capsule)
{
    /* Only a capsule nobody consumed still has its first name; a consumer
     * renamed it to used_* and owns the deleter call. */
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    if (PyCapsule_IsValid(capsule, NAME_LEGACY)) {
        DLManagedTensor *managed = PyCapsule_GetPointer(capsule, NAME_LEGACY);
        if (managed != NULL && managed->deleter != NULL) {
            managed->deleter(managed);
        }
    }
    else if (PyCapsule_IsValid(capsule, NAME_VERSIONED)) {
        DLManagedTensorVersioned *managed = PyCapsule_GetPointer(capsule, NAME_VERSIONED);
        if (managed != NULL && managed->deleter != NULL) {
            managed->deleter(managed);
        }
    }
    PyErr_Clear();
    PyErr_Restore(type, value, traceback);
}

PyDoc_STRVAR(dlpack_export_doc,
"dlpack_export(owner, address, shape, code, bits, versioned, flags) -> capsule\n\n"
"A DLPack capsule over C-contiguous CPU memory at address that keeps owner alive\n"
"until the consumer's deleter runs (or the unconsumed capsule is collected).");

static PyObject *
dlpack_export(PyObject *module, PyObject *args)
{
    PyObject *owner, *shape;
    unsigned long long address, flags;
    int code, bits, versioned;
    if (!PyArg_ParseTuple(args, "OKO!iipK:dlpack_export", &owner, &address, &PyTuple_Type, &shape,
                          &code, &bits, &versioned, &flags)) {
        return NULL;
    }
    Py_ssize_t ndim = PyTuple_GET_SIZE(shape);
    if (ndim > MAX_NDIM || code < 0 || code > 255 || bits <= 0 || bits > 255) {
        PyErr_SetString(PyExc_ValueError, "dlpack_export: bad rank or dtype");
        return NULL;
    }
    Export *export = PyMem_RawCalloc(1, sizeof(Export) + sizeof(int64_t) * 2 * (size_t)(ndim ? ndim : 1));
    if (export == NULL) {
        return PyErr_NoMemory();
    }
    int64_t *dims = export->dims, *strides = export->dims + ndim;
    for (Py_ssize_t i = 0; i < ndim; i++) {
        dims[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(shape, i));
        if (dims[i] < 0) {
            PyMem_RawFree(export);
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_ValueError, "dlpack_export: negative dimension");
            }
            return NULL;
        }
    }
    int64_t step = 1;
    for (Py_ssize_t i = ndim - 1; i >= 0; i--) {
        strides[i] = step;
        step *= dims[i] > 1 ? dims[i] : 1;
    }
    DLTensor *dl = versioned ? &export->versioned.dl_tensor : &export->legacy.dl_tensor;
    dl->data = (void *)(uintptr_t)address;
    dl->device.device_type = KDL_CPU;
    dl->device.device_id = 0;
    dl->ndim = (int32_t)ndim;
    dl->dtype.code = (uint8_t)code;
    dl->dtype.bits = (uint8_t)bits;
    dl->dtype.lanes = 1;
    dl->shape = dims;
    dl->strides = strides;
    dl->byte_offset = 0;
    void *pointer;
    const char *name;
    if (versioned) {
        export->versioned.version.major = 1;
        export->versioned.version.minor = 0;
        export->versioned.manager_ctx = export;
        export->versioned.deleter = delete_versioned;
        export->versioned.flags = flags;
        pointer = &export->versioned;
        name = NAME_VERSIONED;
    }
    else {
        export->legacy.manager_ctx = export;
        export->legacy.deleter = delete_legacy;
        pointer = &export->legacy;
        name = NAME_LEGACY;
    }
    Py_INCREF(owner);
    export->owner = owner;
    live_exports++;
    PyObject *capsule = PyCapsule_New(pointer, name, capsule_destructor);
    if (capsule == NULL) {
        Py_DECREF(owner);
        live_exports--;
        PyMem_RawFree(export);
    }
    return capsule;
}

static PyObject *
live(PyObject *module, PyObject *unused)
{
    return PyLong_FromSsize_t(live_exports);
}

/* ---- DLPack import ---------------------------------------------------------- */

/* A consumed DLPack tensor; calls the producer's deleter once, at release() or
 * when collected, whichever comes first. */
typedef struct {
    PyObject_HEAD
    void *managed;
    int versioned;
} Imported;

static void
imported_release_now(Imported *self)
{
    void *managed = self->managed;
    self->managed = NULL;
    if (managed == NULL) {
        return;
    }
    if (self->versioned) {
        DLManagedTensorVersioned *m = managed;
        if (m->deleter != NULL) {
            m->deleter(m);
        }
    }
    else {
        DLManagedTensor *m = managed;
        if (m->deleter != NULL) {
            m->deleter(m);
        }
    }
}

static PyObject *
imported_release(Imported *self, PyObject *unused)
{
    imported_release_now(self);
    Py_RETURN_NONE;
}

static void
imported_dealloc(Imported *self)
{
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    imported_release_now(self);
    PyErr_Restore(type, value, traceback);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef imported_methods[] = {
    {"release", (PyCFunction)imported_release, METH_NOARGS, "Call the producer's deleter (once)."},
    {NULL},
};

static PyTypeObject ImportedType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "rlmesh._native.DLPackImport",
    .tp_doc = "A consumed DLPack tensor whose producer's deleter runs once.",
    .tp_basicsize = sizeof(Imported),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)imported_dealloc,
    .tp_methods = imported_methods,
};

PyDoc_STRVAR(capsule_name_doc,
"capsule_name(obj) -> bytes | None\n\n"
"The name of a capsule, or None for an unnamed one. Raises TypeError for a non-capsule.");

static PyObject *
capsule_name(PyObject *module, PyObject *obj)
{
    if (!PyCapsule_CheckExact(obj)) {
        PyErr_Format(PyExc_TypeError, "expected a capsule, got %.100s", Py_TYPE(obj)->tp_name);
        return NULL;
    }
    const char *name = PyCapsule_GetName(obj);
    if (name == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    return PyBytes_FromString(name);
}

PyDoc_STRVAR(dlpack_take_doc,
"dlpack_take(capsule) -> (import, data, shape, strides, code, bits, lanes, device_type, read_only)\n\n"
"Consume an unused dltensor or dltensor_versioned capsule: check it, rename it to\n"
"its used_ name and return its metadata. strides is None when absent. The import\n"
"object calls the producer's deleter on release() or when collected. Raises\n"
"BufferError for a capsule of another name, a newer major version or a bad rank.");

static PyObject *
dlpack_take(PyObject *module, PyObject *capsule)
{
    int versioned;
    const char *used;
    DLTensor *dl;
    void *managed;
    int read_only = 0;
    if (PyCapsule_IsValid(capsule, NAME_VERSIONED)) {
        DLManagedTensorVersioned *m = PyCapsule_GetPointer(capsule, NAME_VERSIONED);
        if (m == NULL) {
            return NULL;
        }
        if (m->version.major > 1) {
            PyErr_Format(PyExc_BufferError,
                         "DLPack version %u.%u is newer than the 1.x this build understands",
                         m->version.major, m->version.minor);
            return NULL;
        }
        versioned = 1;
        used = NAME_USED_VERSIONED;
        dl = &m->dl_tensor;
        read_only = (m->flags & 1) != 0;
        managed = m;
    }
    else if (PyCapsule_IsValid(capsule, NAME_LEGACY)) {
        DLManagedTensor *m = PyCapsule_GetPointer(capsule, NAME_LEGACY);
        if (m == NULL) {
            return NULL;
        }
        versioned = 0;
        used = NAME_USED_LEGACY;
        dl = &m->dl_tensor;
        managed = m;
    }
    else {
        PyErr_Clear();
        PyErr_SetString(PyExc_BufferError, "not an unconsumed DLPack capsule");
        return NULL;
    }
    if (dl->ndim < 0 || dl->ndim > MAX_NDIM || (dl->ndim > 0 && dl->shape == NULL)) {
        PyErr_Format(PyExc_BufferError, "DLPack tensor has an invalid rank %d", (int)dl->ndim);
        return NULL;
    }
    PyObject *shape = PyTuple_New(dl->ndim);
    PyObject *strides = NULL;
    if (shape == NULL) {
        return NULL;
    }
    for (int32_t i = 0; i < dl->ndim; i++) {
        PyObject *d = PyLong_FromLongLong(dl->shape[i]);
        if (d == NULL) {
            Py_DECREF(shape);
            return NULL;
        }
        PyTuple_SET_ITEM(shape, i, d);
    }
    if (dl->ndim > 0 && dl->strides != NULL) {
        strides = PyTuple_New(dl->ndim);
        if (strides == NULL) {
            Py_DECREF(shape);
            return NULL;
        }
        for (int32_t i = 0; i < dl->ndim; i++) {
            PyObject *s = PyLong_FromLongLong(dl->strides[i]);
            if (s == NULL) {
                Py_DECREF(shape);
                Py_DECREF(strides);
                return NULL;
            }
            PyTuple_SET_ITEM(strides, i, s);
        }
    }
    else {
        strides = Py_None;
        Py_INCREF(strides);
    }
    Imported *imported = PyObject_New(Imported, &ImportedType);
    if (imported == NULL) {
        Py_DECREF(shape);
        Py_DECREF(strides);
        return NULL;
    }
    imported->managed = NULL;
    imported->versioned = versioned;
    /* Rename first: from here on the deleter call is ours, not the destructor's. */
    if (PyCapsule_SetName(capsule, used) < 0) {
        Py_DECREF(imported);
        Py_DECREF(shape);
        Py_DECREF(strides);
        return NULL;
    }
    imported->managed = managed;
    uintptr_t data = (uintptr_t)dl->data + (uintptr_t)dl->byte_offset;
    return Py_BuildValue("(NKNNiiiiO)", (PyObject *)imported, (unsigned long long)data, shape, strides,
                         (int)dl->dtype.code, (int)dl->dtype.bits, (int)dl->dtype.lanes,
                         (int)dl->device.device_type, read_only ? Py_True : Py_False);
}

/* ---- buffer_address ----------------------------------------------------------- */

PyDoc_STRVAR(buffer_address_doc,
"buffer_address(obj) -> int\n\n"
"The address of the first byte of a buffer-protocol object, read-only ones\n"
"included. Raises TypeError for an object without the buffer protocol.");

static PyObject *
buffer_address(PyObject *module, PyObject *obj)
{
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    PyObject *result = PyLong_FromVoidPtr(view.buf);
    PyBuffer_Release(&view);
    return result;
}

/* ---- memory_barrier ----------------------------------------------------------- */

PyDoc_STRVAR(memory_barrier_doc,
"memory_barrier()\n\n"
"A full memory fence: this thread's stores before the call are visible to\n"
"other threads and processes before any of its loads after the call. The\n"
"doorbells need it between publishing a flag and reading the peer's.");

static PyObject *
memory_barrier(PyObject *module, PyObject *unused)
{
    /* Sequentially consistent, not acquire/release: only a full fence orders
     * an earlier store before a later load (the Dekker pattern of a waiter
     * and a ringer). mfence on x86-64, dmb ish on arm64. It is also a compiler
     * barrier, and the GIL stays held: nothing else needs to happen here. */
    atomic_thread_fence(memory_order_seq_cst);
    Py_RETURN_NONE;
}

/* ---- module ------------------------------------------------------------------- */

/* _native_ring.c: the Ring type, futex_wait, futex_wake, sched_yield. */
extern int rlmesh_native_ring_init(PyObject *module);

static PyMethodDef module_methods[] = {
    {"dlpack_export", dlpack_export, METH_VARARGS, dlpack_export_doc},
    {"dlpack_take", dlpack_take, METH_O, dlpack_take_doc},
    {"capsule_name", capsule_name, METH_O, capsule_name_doc},
    {"live_exports", live, METH_NOARGS, "The number of exports whose deleter has not run yet."},
    {"buffer_address", buffer_address, METH_O, buffer_address_doc},
    {"memory_barrier", memory_barrier, METH_NOARGS, memory_barrier_doc},
    {NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "rlmesh._native",
    .m_doc = "rlmesh's native base type for Tensor, DLPack capsule lifetimes, buffer addresses, "
             "a memory barrier, and the per-step shared-memory ring, futex doorbell and spin.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    if (PyType_Ready(&TensorBaseType) < 0 || PyType_Ready(&ImportedType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&native_module);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&TensorBaseType);
    if (PyModule_AddObject(module, "TensorBase", (PyObject *)&TensorBaseType) < 0) {
        Py_DECREF(&TensorBaseType);
        Py_DECREF(module);
        return NULL;
    }
    Py_INCREF(&ImportedType);
    if (PyModule_AddObject(module, "DLPackImport", (PyObject *)&ImportedType) < 0) {
        Py_DECREF(&ImportedType);
        Py_DECREF(module);
        return NULL;
    }
    if (rlmesh_native_ring_init(module) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    /* _native_step.c: the fixed-shape step codec (step_send, step_recv, ok_send, ok_recv). */
    extern int rlmesh_native_step_init(PyObject *module);
    if (rlmesh_native_step_init(module) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
