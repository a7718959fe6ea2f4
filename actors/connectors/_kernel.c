/*
 * The connectors' per-frame hot path in C: apply one level to an L2Book side (a dict
 * price -> size plus the ascending list of its prices) and pack its ring record, in one
 * call instead of ~8 lines of CPython per level; and read a microsecond RFC 3339 stamp.
 *
 * Optional: actors/connectors/base.py uses it when it compiled and falls back to its
 * pure-Python twins (_apply_level_python, _apply_side_python, ...) otherwise. Both do the same
 * thing to the same objects: the dict gets the very float objects float(text) returns, the
 * list stays sorted with bisect's rules, the record's bytes are RECORD_DTYPE's
 * (shm/records.py; base.py checks RECORD_BYTES and SIDE_OFFSET against it at import), and
 * a level that fails validation raises ValueError with the levels before it applied.
 * tests/test_levels.py runs both on the same inputs and compares books and bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "records are little-endian (shm/records.py): this file copies native values into them"
#endif

enum { RECORD_BYTES = 64, SIDE_OFFSET = 59 };
static double max_price, max_size; /* base.MAX_PRICE / MAX_SIZE, set by configure() */
static PyObject *index_zero, *index_one;

/* bisect_left over an ascending list of floats (generic comparison for anything else) */
static int bisect_left(PyObject *prices, PyObject *price, double value, Py_ssize_t *index) {
    Py_ssize_t low = 0, high = PyList_GET_SIZE(prices);
    while (low < high) {
        Py_ssize_t middle = low + (high - low) / 2;
        PyObject *item = PyList_GET_ITEM(prices, middle);
        int less;
        if (PyFloat_CheckExact(item)) {
            less = PyFloat_AS_DOUBLE(item) < value;
        } else {
            Py_INCREF(item);
            less = PyObject_RichCompareBool(item, price, Py_LT);
            Py_DECREF(item);
            if (less < 0)
                return -1;
        }
        if (less)
            low = middle + 1;
        else
            high = middle;
    }
    *index = low;
    return 0;
}

/* the book side: set (size != 0) or delete (size == 0, a no-op for an unknown price) */
static int set_level(PyObject *levels, PyObject *prices, PyObject *price, double price_value, PyObject *size,
                     double size_value) {
    Py_ssize_t index;
    if (size_value != 0.0) {
        int known = PyDict_Contains(levels, price);
        if (known < 0)
            return -1;
        if (!known) {
            if (bisect_left(prices, price, price_value, &index) < 0 || PyList_Insert(prices, index, price) < 0)
                return -1;
        }
        return PyDict_SetItem(levels, price, size);
    }
    PyObject *removed = PyDict_GetItemWithError(levels, price);
    if (removed == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (PyDict_DelItem(levels, price) < 0)
        return -1;
    if (bisect_left(prices, price, price_value, &index) < 0)
        return -1;
    return PyList_SetSlice(prices, index, index + 1, NULL);
}

typedef struct {
    char *scratch;
    Py_ssize_t capacity; /* bytes */
    int64_t exchange_ts, receive_ts;
    uint64_t sequence;
    unsigned char side;
} Pack;

static int pack(const Pack *pack, Py_ssize_t offset, double price, double size) {
    if (offset < 0 || offset + RECORD_BYTES > pack->capacity) {
        PyErr_SetString(PyExc_IndexError, "the record does not fit the scratch (reserve it first)");
        return -1;
    }
    char *record = pack->scratch + offset;
    memcpy(record, &pack->exchange_ts, 8);
    memcpy(record + 8, &pack->receive_ts, 8);
    memcpy(record + 16, &price, 8);
    memcpy(record + 24, &size, 8);
    memcpy(record + 32, &pack->sequence, 8);
    record[SIDE_OFFSET] = (char)pack->side;
    return 0;
}

/* args[first..first+5): scratch, offset, exchange_ts, receive_ts, sequence, side */
static int read_pack(PyObject *const *args, Pack *out, Py_ssize_t *offset) {
    if (!PyByteArray_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "scratch must be a bytearray");
        return -1;
    }
    out->scratch = PyByteArray_AS_STRING(args[0]);
    out->capacity = PyByteArray_GET_SIZE(args[0]);
    *offset = PyLong_AsSsize_t(args[1]);
    if (*offset == -1 && PyErr_Occurred())
        return -1;
    int overflow_ex, overflow_re;
    out->exchange_ts = PyLong_AsLongLongAndOverflow(args[2], &overflow_ex);
    out->receive_ts = PyLong_AsLongLongAndOverflow(args[3], &overflow_re);
    if (PyErr_Occurred())
        return -1;
    if (overflow_ex || overflow_re) {
        PyErr_SetString(PyExc_ValueError, "a timestamp does not fit int64 nanoseconds");
        return -1;
    }
    out->sequence = PyLong_AsUnsignedLongLong(args[4]);
    if (out->sequence == (uint64_t)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "sequence must be an int in [0, 2**64), got %R", args[4]);
        return -1;
    }
    long side = PyLong_AsLong(args[5]);
    if (side == -1 && PyErr_Occurred())
        return -1;
    out->side = (unsigned char)side;
    return 0;
}

/* the argument count, and args[0], args[1] a book side's dict and ascending price list */
static int check_side(const char *name, PyObject *const *args, Py_ssize_t nargs, Py_ssize_t expected) {
    if (nargs != expected) {
        PyErr_Format(PyExc_TypeError, "%s takes %zd arguments", name, expected);
        return -1;
    }
    if (!PyDict_CheckExact(args[0]) || !PyList_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "a book side is a dict and a list");
        return -1;
    }
    return 0;
}

/* apply_level(levels, prices, price, size, scratch, offset, exchange_ts, receive_ts, sequence, side) -> offset
 * for a level the caller already parsed and validated (a float price, a float size) */
static PyObject *apply_level(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (check_side("apply_level", args, nargs, 10) < 0)
        return NULL;
    PyObject *levels = args[0], *prices = args[1], *price = args[2], *size = args[3];
    Pack packing;
    Py_ssize_t offset;
    if (read_pack(args + 4, &packing, &offset) < 0)
        return NULL;
    double price_value = PyFloat_AsDouble(price);
    double size_value = PyFloat_AsDouble(size);
    if (PyErr_Occurred())
        return NULL;
    if (set_level(levels, prices, price, price_value, size, size_value) < 0 ||
        pack(&packing, offset, price_value, size_value) < 0)
        return NULL;
    return PyLong_FromSsize_t(offset + RECORD_BYTES);
}

/* one level's price and size texts (or numbers) read by float(), validated, applied, packed */
static int apply_text(PyObject *levels, PyObject *prices, PyObject *price_text, PyObject *size_text,
                      const Pack *packing, Py_ssize_t offset) {
    PyObject *price = PyNumber_Float(price_text);
    PyObject *size = price == NULL ? NULL : PyNumber_Float(size_text);
    int failed = size == NULL;
    if (!failed) {
        double price_value = PyFloat_AS_DOUBLE(price), size_value = PyFloat_AS_DOUBLE(size);
        if (!(price_value > 0.0 && price_value <= max_price && size_value >= 0.0 && size_value <= max_size)) {
            PyErr_Format(PyExc_ValueError, "invalid level %R %R", price_text, size_text);
            failed = 1;
        } else {
            failed = set_level(levels, prices, price, price_value, size, size_value) < 0 ||
                     pack(packing, offset, price_value, size_value) < 0;
        }
    }
    Py_XDECREF(price);
    Py_XDECREF(size);
    return failed ? -1 : 0;
}

/* apply_side(levels, prices, raw_levels, scratch, offset, exchange_ts, receive_ts, sequence, side) -> offset
 * for a venue's own levels: each a sequence whose [0] and [1] are the price and size as
 * float() reads them (decimal texts or JSON numbers), validated as base.py's loops do */
static PyObject *apply_side(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (check_side("apply_side", args, nargs, 9) < 0)
        return NULL;
    PyObject *levels = args[0], *prices = args[1];
    Pack packing;
    Py_ssize_t offset;
    if (read_pack(args + 3, &packing, &offset) < 0)
        return NULL;
    PyObject *raw = PySequence_Fast(args[2], "levels must be a sequence");
    if (raw == NULL)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(raw);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *level = PySequence_Fast_GET_ITEM(raw, i);
        PyObject *price_text, *size_text;
        if (PyList_CheckExact(level) && PyList_GET_SIZE(level) >= 2) {
            price_text = PyList_GET_ITEM(level, 0);
            size_text = PyList_GET_ITEM(level, 1);
            Py_INCREF(price_text);
            Py_INCREF(size_text);
        } else if (PyTuple_CheckExact(level) && PyTuple_GET_SIZE(level) >= 2) {
            price_text = PyTuple_GET_ITEM(level, 0);
            size_text = PyTuple_GET_ITEM(level, 1);
            Py_INCREF(price_text);
            Py_INCREF(size_text);
        } else {
            price_text = PyObject_GetItem(level, index_zero); /* level[0], level[1], as Python reads them */
            size_text = price_text == NULL ? NULL : PyObject_GetItem(level, index_one);
            if (size_text == NULL) {
                if (PyErr_ExceptionMatches(PyExc_LookupError)) {
                    PyErr_Clear();
                    PyErr_Format(PyExc_ValueError, "a level needs a price and a size, got %R", level);
                }
                Py_XDECREF(price_text);
                Py_DECREF(raw);
                return NULL;
            }
        }
        int failed = apply_text(levels, prices, price_text, size_text, &packing, offset) < 0;
        offset += RECORD_BYTES;
        Py_DECREF(price_text);
        Py_DECREF(size_text);
        if (failed) {
            Py_DECREF(raw);
            return NULL;
        }
    }
    Py_DECREF(raw);
    return PyLong_FromSsize_t(offset);
}

/* apply_sequenced_side(levels, prices, changes, scratch, offset, exchange_ts, receive_ts, side) -> offset
 * for changes that carry their own sequence, [price, size, sequence] exactly (KuCoin's): each
 * record gets int(sequence), and a change whose price is the text "0" only advances the
 * sequence, so it is skipped */
static PyObject *apply_sequenced_side(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (check_side("apply_sequenced_side", args, nargs, 8) < 0)
        return NULL;
    PyObject *levels = args[0], *prices = args[1];
    PyObject *pack_args[6] = {args[3], args[4], args[5], args[6], index_zero, args[7]};
    Pack packing;
    Py_ssize_t offset;
    if (read_pack(pack_args, &packing, &offset) < 0)
        return NULL;
    PyObject *raw = PySequence_Fast(args[2], "changes must be a sequence");
    if (raw == NULL)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(raw);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *change = PySequence_Fast(PySequence_Fast_GET_ITEM(raw, i), "a change must be a sequence");
        if (change == NULL) {
            Py_DECREF(raw);
            return NULL;
        }
        if (PySequence_Fast_GET_SIZE(change) != 3) { /* as unpacking it into three names says */
            PyErr_Format(PyExc_ValueError, "a change is [price, size, sequence], got %zd values",
                         PySequence_Fast_GET_SIZE(change));
            Py_DECREF(change);
            Py_DECREF(raw);
            return NULL;
        }
        PyObject *price_text = PySequence_Fast_GET_ITEM(change, 0);
        int failed = 0;
        if (!(PyUnicode_CheckExact(price_text) && PyUnicode_CompareWithASCIIString(price_text, "0") == 0)) {
            PyObject *sequence = PyNumber_Long(PySequence_Fast_GET_ITEM(change, 2));
            if (sequence == NULL) {
                failed = 1;
            } else {
                packing.sequence = PyLong_AsUnsignedLongLong(sequence);
                if (packing.sequence == (uint64_t)-1 && PyErr_Occurred()) {
                    PyErr_Clear();
                    PyErr_Format(PyExc_ValueError, "sequence must be an int in [0, 2**64), got %R", sequence);
                    failed = 1;
                }
                Py_DECREF(sequence);
            }
            if (!failed) {
                failed = apply_text(levels, prices, price_text, PySequence_Fast_GET_ITEM(change, 1), &packing, offset) < 0;
                offset += RECORD_BYTES;
            }
        }
        Py_DECREF(change);
        if (failed) {
            Py_DECREF(raw);
            return NULL;
        }
    }
    Py_DECREF(raw);
    return PyLong_FromSsize_t(offset);
}

/* micros_stamp_ns(text) -> int | None: "YYYY-MM-DDTHH:MM:SS.ffffffZ" (Coinbase's layout, digits
 * only, a valid date and time of 1970-2261) as ns since the epoch; None for anything else,
 * which base.rfc3339_ns then reads (the authority: this only ever refuses more than it takes) */
static int digits(const char *text, int start, int count, int *value) {
    int result = 0;
    for (int i = start; i < start + count; i++) {
        if (text[i] < '0' || text[i] > '9')
            return -1;
        result = result * 10 + (text[i] - '0');
    }
    *value = result;
    return 0;
}

static int64_t days_from_civil(int64_t year, int month, int day) { /* H. Hinnant's algorithm */
    year -= month <= 2;
    int64_t era = (year >= 0 ? year : year - 399) / 400;
    int64_t year_of_era = year - era * 400;
    int64_t day_of_year = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1;
    int64_t day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    return era * 146097 + day_of_era - 719468;
}

static PyObject *micros_stamp_ns(PyObject *module, PyObject *text) {
    static const int month_days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (!PyUnicode_CheckExact(text) || PyUnicode_GET_LENGTH(text) != 27 || !PyUnicode_IS_ASCII(text))
        Py_RETURN_NONE;
    const char *c = (const char *)PyUnicode_DATA(text);
    int year, month, day, hour, minute, second, micros;
    if (c[4] != '-' || c[7] != '-' || c[10] != 'T' || c[13] != ':' || c[16] != ':' || c[19] != '.' || c[26] != 'Z' ||
        digits(c, 0, 4, &year) || digits(c, 5, 2, &month) || digits(c, 8, 2, &day) || digits(c, 11, 2, &hour) ||
        digits(c, 14, 2, &minute) || digits(c, 17, 2, &second) || digits(c, 20, 6, &micros))
        Py_RETURN_NONE;
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (year < 1970 || year > 2261 || month < 1 || month > 12 || day < 1 ||
        day > month_days[month - 1] + (month == 2 && leap) || hour > 23 || minute > 59 || second > 59)
        Py_RETURN_NONE;
    int64_t seconds = days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second;
    return PyLong_FromLongLong(seconds * 1000000000 + (int64_t)micros * 1000);
}

static PyObject *configure(PyObject *module, PyObject *args) {
    if (!PyArg_ParseTuple(args, "dd", &max_price, &max_size))
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"apply_level", (PyCFunction)(void (*)(void))apply_level, METH_FASTCALL,
     "apply_level(levels, prices, price, size, scratch, offset, exchange_ts, receive_ts, sequence, side) -> offset"},
    {"apply_side", (PyCFunction)(void (*)(void))apply_side, METH_FASTCALL,
     "apply_side(levels, prices, raw_levels, scratch, offset, exchange_ts, receive_ts, sequence, side) -> offset"},
    {"apply_sequenced_side", (PyCFunction)(void (*)(void))apply_sequenced_side, METH_FASTCALL,
     "apply_sequenced_side(levels, prices, changes, scratch, offset, exchange_ts, receive_ts, side) -> offset"},
    {"micros_stamp_ns", micros_stamp_ns, METH_O,
     "micros_stamp_ns(text) -> int | None: a YYYY-MM-DDTHH:MM:SS.ffffffZ stamp as epoch ns, None for any other text"},
    {"configure", configure, METH_VARARGS, "configure(max_price, max_size): the validation bounds"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_kernel", NULL, -1, methods};

PyMODINIT_FUNC PyInit__kernel(void) {
    index_zero = PyLong_FromLong(0);
    index_one = PyLong_FromLong(1);
    if (index_zero == NULL || index_one == NULL)
        return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    if (PyModule_AddIntConstant(module, "RECORD_BYTES", RECORD_BYTES) < 0 ||
        PyModule_AddIntConstant(module, "SIDE_OFFSET", SIDE_OFFSET) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
