/*
 * The connectors' per-frame hot path in C: apply one level to an L2Book side (a dict
 * price -> size plus the ascending list of its prices) and pack its ring record, in one
 * call instead of ~8 lines of CPython per level; read a microsecond RFC 3339 stamp; and a
 * REST-seeded feed's live delta from its changes to its ring write (publish_live_delta, and
 * KuCoin's apply_live_sequenced_delta), the counters, depth, crossed-book and cross-check
 * rules included: those steps cost more in CPython than the levels themselves.
 *
 * Optional: actors/connectors/base.py uses it when it compiled and falls back to its
 * pure-Python twins (_apply_level_python, _apply_side_python, ...) otherwise. Both do the same
 * thing to the same objects: the dict gets the very float objects float(text) returns, the
 * list stays sorted with bisect's rules, the record's bytes are RECORD_DTYPE's
 * (shm/records.py; base.py checks RECORD_BYTES and SIDE_OFFSET against it at import), and
 * a level that fails validation raises ValueError with the levels before it applied. The feed
 * functions read and write the same attributes in the same order and call the connector's own
 * methods (_truncate, _resync, ...) for the rare steps. tests/test_kernel.py runs both on the
 * same inputs and compares books, bytes, counters and errors.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h> /* T_OBJECT_EX, PyMember_GetOne (3.11; in Python.h from 3.12) */
#include <stdint.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "records are little-endian (shm/records.py): this file copies native values into them"
#endif

enum { RECORD_BYTES = 64, SIDE_OFFSET = 59 };
static double max_price, max_size; /* base.MAX_PRICE / MAX_SIZE, set by configure() */
static long side_bid, side_ask;       /* shm.records.Side, set by configure_feeds() */
static PyObject *index_zero, *index_one, *index_two;

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
    if (size_value != 0.0) { /* one dict lookup: a known price keeps its key, a new one grows the dict */
        Py_ssize_t known = PyDict_GET_SIZE(levels);
        if (PyDict_SetItem(levels, price, size) < 0)
            return -1;
        if (PyDict_GET_SIZE(levels) == known)
            return 0;
        if (bisect_left(prices, price, price_value, &index) < 0 || PyList_Insert(prices, index, price) < 0) {
            PyObject *type, *value, *traceback; /* the price stays out of the side, as in Python (insort first) */
            PyErr_Fetch(&type, &value, &traceback);
            if (PyDict_DelItem(levels, price) < 0)
                PyErr_Clear(); /* the first error is the one raised */
            PyErr_Restore(type, value, traceback);
            return -1;
        }
        return 0;
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
    /* a timestamp or sequence the record cannot hold: the ValueError comes at the first record
     * packed, as struct.pack_into raises it in the Python twins (a frame that packs nothing is fine) */
    int stamps_unpackable, sequence_unpackable;
} Pack;

/* the record first, then the book (as the Python twin): a record that cannot be packed leaves the book as it was */
static int pack(const Pack *pack, Py_ssize_t offset, double price, double size) {
    if (pack->stamps_unpackable || pack->sequence_unpackable) {
        PyErr_SetString(PyExc_ValueError, "a timestamp or sequence the record cannot hold");
        return -1;
    }
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

/* an int64 nanosecond stamp as the "l" of struct reads it; 0 if it cannot be */
static int read_stamp(PyObject *value, int64_t *out) {
    int overflow;
    *out = PyLong_AsLongLongAndOverflow(value, &overflow);
    if ((*out == -1 && PyErr_Occurred()) || overflow) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

/* a sequence in [0, 2**64) as the "L" of struct reads it; 0 if it cannot be */
static int read_sequence(PyObject *value, uint64_t *out) {
    *out = PyLong_AsUnsignedLongLong(value);
    if (*out == (uint64_t)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

static int read_scratch(PyObject *scratch, Pack *out) {
    if (!PyByteArray_Check(scratch)) {
        PyErr_SetString(PyExc_TypeError, "scratch must be a bytearray");
        return -1;
    }
    out->scratch = PyByteArray_AS_STRING(scratch);
    out->capacity = PyByteArray_GET_SIZE(scratch);
    return 0;
}

static void read_stamps(PyObject *exchange_ts, PyObject *receive_ts, Pack *out) {
    out->stamps_unpackable = !(read_stamp(exchange_ts, &out->exchange_ts) & read_stamp(receive_ts, &out->receive_ts));
}

/* args[0..6): scratch, offset, exchange_ts, receive_ts, sequence, side */
static int read_pack(PyObject *const *args, Pack *out, Py_ssize_t *offset) {
    if (read_scratch(args[0], out) < 0)
        return -1;
    *offset = PyLong_AsSsize_t(args[1]);
    if (*offset == -1 && PyErr_Occurred())
        return -1;
    read_stamps(args[2], args[3], out);
    out->sequence_unpackable = !read_sequence(args[4], &out->sequence);
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
    if (pack(&packing, offset, price_value, size_value) < 0 ||
        set_level(levels, prices, price, price_value, size, size_value) < 0)
        return NULL;
    return PyLong_FromSsize_t(offset + RECORD_BYTES);
}

/* one level's price and size texts (or numbers) read by float(), validated, packed, applied */
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
            failed = pack(packing, offset, price_value, size_value) < 0 ||
                     set_level(levels, prices, price, price_value, size, size_value) < 0;
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

/* an exact str equal to "0" (a KuCoin change that only advances the sequence) */
static int is_text_zero(PyObject *text) {
    return PyUnicode_CheckExact(text) && PyUnicode_GET_LENGTH(text) == 1 && PyUnicode_READ_CHAR(text, 0) == '0';
}

/* int(text) for a str of 1 to 19 ASCII digits (below 2**64: what a venue's sequence is), without
 * making the int; 0 for anything else, which int() itself then reads */
static int digits_only(PyObject *text, uint64_t *value) {
    if (!PyUnicode_CheckExact(text) || !PyUnicode_IS_ASCII(text))
        return 0;
    Py_ssize_t length = PyUnicode_GET_LENGTH(text);
    if (length < 1 || length > 19)
        return 0;
    const char *c = (const char *)PyUnicode_DATA(text);
    uint64_t result = 0;
    for (Py_ssize_t i = 0; i < length; i++) {
        if (c[i] < '0' || c[i] > '9')
            return 0;
        result = result * 10 + (uint64_t)(c[i] - '0');
    }
    *value = result;
    return 1;
}

/* KuCoin's changes, [price, size, sequence] exactly, onto one book side from `offset`: each record
 * gets int(sequence), and a change whose price is the text "0" only advances the sequence, so it
 * is skipped. Returns the offset after the last record, -1 on error. */
static Py_ssize_t sequenced_side(PyObject *levels, PyObject *prices, PyObject *changes, Pack *packing,
                                 Py_ssize_t offset) {
    PyObject *raw = PySequence_Fast(changes, "changes must be a sequence");
    if (raw == NULL)
        return -1;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(raw);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *change = PySequence_Fast(PySequence_Fast_GET_ITEM(raw, i), "a change must be a sequence");
        if (change == NULL) {
            Py_DECREF(raw);
            return -1;
        }
        if (PySequence_Fast_GET_SIZE(change) != 3) { /* as unpacking it into three names says */
            PyErr_Format(PyExc_ValueError, "a change is [price, size, sequence], got %zd values",
                         PySequence_Fast_GET_SIZE(change));
            Py_DECREF(change);
            Py_DECREF(raw);
            return -1;
        }
        PyObject *price_text = PySequence_Fast_GET_ITEM(change, 0);
        int failed = 0;
        if (!is_text_zero(price_text)) {
            PyObject *sequence_text = PySequence_Fast_GET_ITEM(change, 2);
            if (digits_only(sequence_text, &packing->sequence)) {
                packing->sequence_unpackable = 0;
            } else {
                PyObject *sequence = PyNumber_Long(sequence_text);
                failed = sequence == NULL;
                if (!failed) {
                    packing->sequence_unpackable = !read_sequence(sequence, &packing->sequence);
                    Py_DECREF(sequence);
                }
            }
            if (!failed) {
                failed = apply_text(levels, prices, price_text, PySequence_Fast_GET_ITEM(change, 1), packing, offset) < 0;
                offset += RECORD_BYTES;
            }
        }
        Py_DECREF(change);
        if (failed) {
            Py_DECREF(raw);
            return -1;
        }
    }
    Py_DECREF(raw);
    return offset;
}

/* apply_sequenced_side(levels, prices, changes, scratch, offset, exchange_ts, receive_ts, side) -> offset */
static PyObject *apply_sequenced_side(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (check_side("apply_sequenced_side", args, nargs, 8) < 0)
        return NULL;
    PyObject *pack_args[6] = {args[3], args[4], args[5], args[6], index_zero, args[7]};
    Pack packing;
    Py_ssize_t offset;
    if (read_pack(pack_args, &packing, &offset) < 0)
        return NULL;
    offset = sequenced_side(args[0], args[1], args[2], &packing, offset);
    return offset < 0 ? NULL : PyLong_FromSsize_t(offset);
}

/* change_sequence(change) -> int: the sort key of a KuCoin change, int(change[2]); a change that
 * is not three values is a bad frame (ValueError) */
static PyObject *change_sequence(PyObject *module, PyObject *change) {
    Py_ssize_t size = PyObject_Size(change);
    if (size < 0)
        return NULL;
    if (size != 3) {
        PyErr_Format(PyExc_ValueError, "bad change %R", change);
        return NULL;
    }
    PyObject *text = PyObject_GetItem(change, index_two);
    if (text == NULL)
        return NULL;
    PyObject *sequence = PyNumber_Long(text);
    Py_DECREF(text);
    return sequence;
}

/* ---- a feed's live delta ----------------------------------------------------------------------
 *
 * base.py's per-frame objects keep their state in __slots__. Each attribute read or written here is
 * one of those slots, found at configure_feeds() as a plain object member (T_OBJECT_EX, writable) of
 * its class: for an object of exactly that class it is read and written in place, as the member
 * descriptor does (PyMember_GetOne/SetOne) without looking the name up; anything else (a subclass,
 * a test double) takes the generic attribute protocol. */

enum {
    FEED_COUNTERS, FEED_BOOK, FEED_RECORDS, FEED_LAST_ID, FEED_EXPECTED_TOPS, FEED_RESEND_PENDING,
    COUNTERS_FRAMES, COUNTERS_FRAMES_APPLIED, COUNTERS_LEVELS_APPLIED, COUNTERS_LAST_EXCHANGE_TS,
    COUNTERS_RECEIVE_LAG_NS, COUNTERS_CROSSED, COUNTERS_PARSE_ERRORS,
    BOOK_BIDS, BOOK_ASKS, BOOK_BID_PRICES, BOOK_ASK_PRICES,
    RECORDS_SCRATCH, RECORDS_CAPACITY, RECORDS_WRITE,
    SLOT_COUNT
};
/* the class (an index into configure_feeds' arguments) and name of each slot */
static const struct {
    int owner;
    const char *name;
} slot_names[SLOT_COUNT] = {
    {0, "counters"}, {0, "book"}, {0, "records"}, {0, "last_id"}, {0, "expected_tops"}, {0, "resend_pending"},
    {1, "frames"}, {1, "frames_applied"}, {1, "levels_applied"}, {1, "last_exchange_ts"}, {1, "receive_lag_ns"},
    {1, "crossed"}, {1, "parse_errors"},
    {2, "bids"}, {2, "asks"}, {2, "bid_prices"}, {2, "ask_prices"},
    {3, "scratch"}, {3, "capacity"}, {3, "sink_write_records"},
};
static struct {
    PyMemberDescrObject *descriptor; /* NULL until configure_feeds() */
    PyTypeObject *owner;
    Py_ssize_t offset;
} slots[SLOT_COUNT];
static PyObject *reason_crossed, *reason_cross_check, *reason_malformed;
static PyObject *name_truncate, *name_resync, *name_check_expected_tops, *name_after_write, *name_depth_limit,
    *name_frame_rejected, *name_output, *name_lost, *name_batches, *name_reserve, *name_sort, *name_key, *text_zero,
    *sort_key_names, *change_sequence_function;

static PyObject *get_slot(PyObject *object, int slot) {
    if (Py_IS_TYPE(object, slots[slot].owner)) {
        PyObject *value = *(PyObject **)((char *)object + slots[slot].offset);
        if (value != NULL)
            return Py_NewRef(value);
        return PyMember_GetOne((const char *)object, slots[slot].descriptor->d_member); /* its AttributeError */
    }
    return PyObject_GetAttr(object, PyDescr_NAME(slots[slot].descriptor));
}

static int set_slot(PyObject *object, int slot, PyObject *value) {
    if (Py_IS_TYPE(object, slots[slot].owner)) {
        Py_XSETREF(*(PyObject **)((char *)object + slots[slot].offset), Py_NewRef(value));
        return 0;
    }
    return PyObject_SetAttr(object, PyDescr_NAME(slots[slot].descriptor), value);
}

/* object.<slot> += amount */
static int add_to_slot(PyObject *object, int slot, PyObject *amount) {
    PyObject *value = get_slot(object, slot);
    if (value == NULL)
        return -1;
    PyObject *sum = PyNumber_InPlaceAdd(value, amount);
    Py_DECREF(value);
    if (sum == NULL)
        return -1;
    int failed = set_slot(object, slot, sum);
    Py_DECREF(sum);
    return failed;
}

/* the truth of a new reference (NULL: an error is set), which is released */
static int truth_of(PyObject *value) {
    if (value == NULL)
        return -1;
    int truth = PyObject_IsTrue(value);
    Py_DECREF(value);
    return truth;
}

/* the truth of object.<slot> */
static int slot_is_true(PyObject *object, int slot) {
    return truth_of(get_slot(object, slot));
}

/* connector.<method>(args...), at most three arguments */
static PyObject *call_method(PyObject *connector, PyObject *method, PyObject *const *args, size_t nargs) {
    PyObject *call_args[4];
    call_args[0] = connector;
    for (size_t i = 0; i < nargs; i++)
        call_args[i + 1] = args[i];
    return PyObject_VectorcallMethod(method, call_args, (nargs + 1) | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* connector.<method>(args...) for its side effects */
static int call_for_effect(PyObject *connector, PyObject *method, PyObject *const *args, size_t nargs) {
    PyObject *result = call_method(connector, method, args, nargs);
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 0;
}

/* connector._resync(feed, reason, receive_ts) */
static int resync(PyObject *connector, PyObject *feed, PyObject *reason, PyObject *receive_ts) {
    PyObject *args[3] = {feed, reason, receive_ts};
    return call_for_effect(connector, name_resync, args, 3);
}

/* `if feed.expected_tops and not connector._check_expected_tops(feed): connector._resync(feed, CROSS_CHECK, ts)`;
 * 1 if it resynced */
static int cross_check(PyObject *connector, PyObject *feed, PyObject *receive_ts) {
    int waiting = slot_is_true(feed, FEED_EXPECTED_TOPS);
    if (waiting <= 0)
        return waiting;
    int agree = truth_of(call_method(connector, name_check_expected_tops, &feed, 1));
    if (agree != 0)
        return agree < 0 ? -1 : 0;
    return resync(connector, feed, reason_cross_check, receive_ts) < 0 ? -1 : 1;
}

/* `count <op> limit` for the int `count`, as Python compares them (a limit that is an int of 64 bits
 * without making an int of count) */
static int compare_count(Py_ssize_t count, PyObject *limit, int op) {
    if (PyLong_CheckExact(limit)) {
        int overflow;
        long long value = PyLong_AsLongLongAndOverflow(limit, &overflow);
        if (!overflow && !(value == -1 && PyErr_Occurred()))
            return op == Py_LE ? count <= value : count > value;
        PyErr_Clear();
    }
    PyObject *count_object = PyLong_FromSsize_t(count);
    if (count_object == NULL)
        return -1;
    int result = PyObject_RichCompareBool(count_object, limit, op);
    Py_DECREF(count_object);
    return result;
}

/* len(sequence) > limit */
static int longer_than(PyObject *sequence, PyObject *limit) {
    Py_ssize_t length = PyObject_Size(sequence);
    return length < 0 ? -1 : compare_count(length, limit, Py_GT);
}

/* the best bid (prices[-1]) at or above the best ask (prices[0]), both sides non-empty */
static int crossed(PyObject *bid_prices, PyObject *ask_prices) {
    int has_bids = PyObject_IsTrue(bid_prices);
    if (has_bids <= 0)
        return has_bids;
    int has_asks = PyObject_IsTrue(ask_prices);
    if (has_asks <= 0)
        return has_asks;
    if (PyList_CheckExact(bid_prices) && PyList_CheckExact(ask_prices)) {
        PyObject *bid = PyList_GET_ITEM(bid_prices, PyList_GET_SIZE(bid_prices) - 1);
        PyObject *ask = PyList_GET_ITEM(ask_prices, 0);
        if (PyFloat_CheckExact(bid) && PyFloat_CheckExact(ask))
            return PyFloat_AS_DOUBLE(bid) >= PyFloat_AS_DOUBLE(ask);
    }
    PyObject *last = PyLong_FromLong(-1);
    PyObject *bid = last == NULL ? NULL : PyObject_GetItem(bid_prices, last);
    PyObject *ask = bid == NULL ? NULL : PyObject_GetItem(ask_prices, index_zero);
    int at_or_above = ask == NULL ? -1 : PyObject_RichCompareBool(bid, ask, Py_GE);
    Py_XDECREF(last);
    Py_XDECREF(bid);
    Py_XDECREF(ask);
    return at_or_above;
}

/* the owned references of one live delta, released together */
typedef struct {
    PyObject *counters, *book, *records, *bid_prices, *ask_prices, *depth_limit, *count;
} Live;

static void release(Live *live) {
    Py_XDECREF(live->counters);
    Py_XDECREF(live->book);
    Py_XDECREF(live->records);
    Py_XDECREF(live->bid_prices);
    Py_XDECREF(live->ask_prices);
    Py_XDECREF(live->depth_limit);
    Py_XDECREF(live->count);
}

/* records.sink_write_records(records.scratch, count), and what follows a refused write */
static int write_records(PyObject *connector, PyObject *records, PyObject *count) {
    PyObject *write = get_slot(records, RECORDS_WRITE);
    if (write == NULL)
        return -1;
    PyObject *scratch = get_slot(records, RECORDS_SCRATCH); /* after _truncate, which may have grown it */
    if (scratch == NULL) {
        Py_DECREF(write);
        return -1;
    }
    PyObject *args[2] = {scratch, count};
    int accepted = truth_of(PyObject_Vectorcall(write, args, 2, NULL));
    Py_DECREF(write);
    Py_DECREF(scratch);
    if (accepted != 0)
        return accepted < 0 ? -1 : 0;
    /* records.output.lost(records.batches[count]); connector._after_write() */
    PyObject *output = PyObject_GetAttr(records, name_output);
    PyObject *batches = output == NULL ? NULL : PyObject_GetAttr(records, name_batches);
    PyObject *batch = batches == NULL ? NULL : PyObject_GetItem(batches, count);
    PyObject *lost = batch == NULL ? NULL : PyObject_CallMethodOneArg(output, name_lost, batch);
    Py_XDECREF(output);
    Py_XDECREF(batches);
    Py_XDECREF(batch);
    if (lost == NULL)
        return -1;
    Py_DECREF(lost);
    return call_for_effect(connector, name_after_write, NULL, 0);
}

/* publish_live_delta's steps on a Live whose counters, book and records are read */
static int publish(PyObject *connector, PyObject *feed, Live *live, PyObject *last_id, PyObject *exchange_ts,
                   PyObject *receive_ts) {
    if (set_slot(feed, FEED_LAST_ID, last_id) < 0 || add_to_slot(live->counters, COUNTERS_FRAMES_APPLIED, index_one) < 0 ||
        add_to_slot(live->counters, COUNTERS_LEVELS_APPLIED, live->count) < 0)
        return -1;
    if (!(live->bid_prices = get_slot(live->book, BOOK_BID_PRICES)) ||
        !(live->ask_prices = get_slot(live->book, BOOK_ASK_PRICES)) ||
        !(live->depth_limit = PyObject_GetAttr(connector, name_depth_limit)))
        return -1;
    if (live->depth_limit != Py_None) {
        int deeper = longer_than(live->bid_prices, live->depth_limit);
        if (deeper == 0)
            deeper = longer_than(live->ask_prices, live->depth_limit);
        if (deeper < 0)
            return -1;
        if (deeper) {
            PyObject *args[6] = {connector, feed, live->count, last_id, exchange_ts, receive_ts};
            PyObject *count = PyObject_VectorcallMethod(name_truncate, args, 6 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            if (count == NULL)
                return -1;
            Py_SETREF(live->count, count);
        }
    }
    int is_crossed = crossed(live->bid_prices, live->ask_prices);
    if (is_crossed < 0)
        return -1;
    if (is_crossed)
        return add_to_slot(live->counters, COUNTERS_CROSSED, index_one) < 0 ? -1
                                                                            : resync(connector, feed, reason_crossed, receive_ts);
    int resynced = cross_check(connector, feed, receive_ts);
    if (resynced != 0)
        return resynced < 0 ? -1 : 0;
    int pending = slot_is_true(feed, FEED_RESEND_PENDING);
    if (pending != 0)
        return pending < 0 ? -1 : 0;
    return write_records(connector, live->records, live->count);
}

static int check_configured(const char *name, Py_ssize_t nargs, Py_ssize_t expected) {
    if (slots[0].descriptor == NULL) {
        PyErr_Format(PyExc_RuntimeError, "%s: call configure_feeds() first", name);
        return -1;
    }
    if (nargs != expected) {
        PyErr_Format(PyExc_TypeError, "%s takes %zd arguments", name, expected);
        return -1;
    }
    return 0;
}

/* publish_live_delta(connector, feed, count, last_id, exchange_ts, receive_ts) -> None: what follows a
 * live, in-sequence delta whose `count` LEVEL records are applied and packed (base.py's twin) */
static PyObject *publish_live_delta(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (check_configured("publish_live_delta", nargs, 6) < 0)
        return NULL;
    PyObject *connector = args[0], *feed = args[1];
    Live live = {NULL};
    live.count = Py_NewRef(args[2]);
    int failed = !(live.counters = get_slot(feed, FEED_COUNTERS)) || !(live.book = get_slot(feed, FEED_BOOK)) ||
                 !(live.records = get_slot(feed, FEED_RECORDS)) ||
                 publish(connector, feed, &live, args[3], args[4], args[5]) < 0;
    release(&live);
    if (failed)
        return NULL;
    Py_RETURN_NONE;
}

/* sorted(changes, key=change_sequence) */
static PyObject *sorted_changes(PyObject *changes) {
    PyObject *sorted = PySequence_List(changes);
    if (sorted == NULL)
        return NULL;
    PyObject *args[2] = {sorted, change_sequence_function};
    PyObject *done = PyObject_VectorcallMethod(name_sort, args, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, sort_key_names);
    if (done == NULL) {
        Py_DECREF(sorted);
        return NULL;
    }
    Py_DECREF(done);
    return sorted;
}

/* records.reserve(count): the scratch, grown to hold `count` records */
static PyObject *reserve(PyObject *records, Py_ssize_t count) {
    PyObject *count_object = PyLong_FromSsize_t(count);
    if (count_object == NULL)
        return NULL;
    PyObject *scratch = PyObject_CallMethodOneArg(records, name_reserve, count_object);
    Py_DECREF(count_object);
    return scratch;
}

/* apply_sequenced_frame's steps; returns the records packed, -1 on error */
static Py_ssize_t sequenced_frame(PyObject *book, PyObject *records, PyObject *raw_bids, PyObject *raw_asks,
                                  PyObject *exchange_ts, PyObject *receive_ts) {
    Py_ssize_t bid_count = PyObject_Size(raw_bids);
    PyObject *bids = bid_count < 0 ? NULL : bid_count > 1 ? sorted_changes(raw_bids) : Py_NewRef(raw_bids);
    Py_ssize_t ask_count = bids == NULL ? -1 : PyObject_Size(raw_asks);
    PyObject *asks = ask_count < 0 ? NULL : ask_count > 1 ? sorted_changes(raw_asks) : Py_NewRef(raw_asks);
    PyObject *capacity = asks == NULL ? NULL : get_slot(records, RECORDS_CAPACITY);
    int fits = capacity == NULL ? -1 : compare_count(bid_count + ask_count, capacity, Py_LE);
    PyObject *scratch = fits < 0 ? NULL : fits ? get_slot(records, RECORDS_SCRATCH) : reserve(records, bid_count + ask_count);
    Py_ssize_t offset = scratch == NULL ? -1 : 0;
    Pack packing;
    if (offset == 0 && read_scratch(scratch, &packing) < 0)
        offset = -1;
    if (offset == 0) {
        read_stamps(exchange_ts, receive_ts, &packing);
        for (int side = 0; side < 2 && offset >= 0; side++) {
            PyObject *changes = side ? asks : bids;
            int present = PyObject_IsTrue(changes);
            if (present <= 0) {
                offset = present < 0 ? -1 : offset;
                continue;
            }
            PyObject *levels = get_slot(book, side ? BOOK_ASKS : BOOK_BIDS);
            PyObject *prices = levels == NULL ? NULL : get_slot(book, side ? BOOK_ASK_PRICES : BOOK_BID_PRICES);
            if (prices == NULL) {
                offset = -1;
            } else if (!PyDict_CheckExact(levels) || !PyList_CheckExact(prices)) {
                PyErr_SetString(PyExc_TypeError, "a book side is a dict and a list");
                offset = -1;
            } else {
                packing.side = (unsigned char)(side ? side_ask : side_bid);
                offset = sequenced_side(levels, prices, changes, &packing, offset);
            }
            Py_XDECREF(levels);
            Py_XDECREF(prices);
        }
    }
    Py_XDECREF(bids);
    Py_XDECREF(asks);
    Py_XDECREF(capacity);
    Py_XDECREF(scratch);
    return offset < 0 ? -1 : offset / RECORD_BYTES;
}

/* apply_sequenced_frame(book, records, raw_bids, raw_asks, sequence, exchange_ts, receive_ts) -> count:
 * apply_frame for KuCoin's [price, size, sequence] changes, each side in sequence order (a price may
 * change twice in one delta), each record with its change's own sequence (`sequence` is unused) */
static PyObject *apply_sequenced_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (check_configured("apply_sequenced_frame", nargs, 7) < 0)
        return NULL;
    Py_ssize_t count = sequenced_frame(args[0], args[1], args[2], args[3], args[5], args[6]);
    return count < 0 ? NULL : PyLong_FromSsize_t(count);
}

/* the sequence-only frame: one change, its price the text "0" */
static int sequence_only(PyObject *bids, PyObject *asks, Py_ssize_t needed) {
    if (needed != 1)
        return 0;
    int has_bids = PyObject_IsTrue(bids);
    if (has_bids < 0)
        return -1;
    PyObject *change = PyObject_GetItem(has_bids ? bids : asks, index_zero);
    PyObject *price = change == NULL ? NULL : PyObject_GetItem(change, index_zero);
    Py_XDECREF(change);
    if (price == NULL)
        return -1;
    int only = PyUnicode_CheckExact(price) ? is_text_zero(price) : PyObject_RichCompareBool(price, text_zero, Py_EQ);
    Py_DECREF(price);
    return only;
}

/* the steps of apply_live_sequenced_delta after the frame counters */
static int live_sequenced(PyObject *connector, PyObject *feed, Live *live, PyObject *last_id, PyObject *bids,
                          PyObject *asks, PyObject *exchange_ts, PyObject *receive_ts) {
    if (!(live->records = get_slot(feed, FEED_RECORDS)))
        return -1;
    Py_ssize_t bid_count = PyObject_Size(bids), ask_count = bid_count < 0 ? -1 : PyObject_Size(asks);
    if (ask_count < 0)
        return -1;
    int only = sequence_only(bids, asks, bid_count + ask_count);
    if (only < 0)
        return -1;
    if (only) { /* nothing to apply or write: a live book is within its depth and uncrossed */
        if (set_slot(feed, FEED_LAST_ID, last_id) < 0 || add_to_slot(live->counters, COUNTERS_FRAMES_APPLIED, index_one) < 0)
            return -1;
        return cross_check(connector, feed, receive_ts) < 0 ? -1 : 0;
    }
    if (!(live->book = get_slot(feed, FEED_BOOK)))
        return -1;
    Py_ssize_t count = sequenced_frame(live->book, live->records, bids, asks, exchange_ts, receive_ts);
    if (count < 0) {
        if (!PyErr_ExceptionMatches(PyExc_ValueError) && !PyErr_ExceptionMatches(PyExc_TypeError))
            return -1;
        PyErr_Clear(); /* part of the frame may be applied, and the frame is lost anyway: resync */
        if (add_to_slot(live->counters, COUNTERS_PARSE_ERRORS, index_one) < 0 ||
            PyObject_SetAttr(connector, name_frame_rejected, Py_True) < 0)
            return -1;
        return resync(connector, feed, reason_malformed, receive_ts);
    }
    if (!(live->count = PyLong_FromSsize_t(count)))
        return -1;
    return publish(connector, feed, live, last_id, exchange_ts, receive_ts);
}

/* apply_live_sequenced_delta(connector, feed, last_id, bids, asks, exchange_ts, receive_ts) -> None: a live,
 * bridged KuCoin delta that follows on, from its typed changes to its ring write (base.py's twin) */
static PyObject *apply_live_sequenced_delta(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (check_configured("apply_live_sequenced_delta", nargs, 7) < 0)
        return NULL;
    PyObject *connector = args[0], *feed = args[1], *exchange_ts = args[5], *receive_ts = args[6];
    Live live = {NULL};
    PyObject *lag = NULL;
    int failed = !(live.counters = get_slot(feed, FEED_COUNTERS)) ||
                 add_to_slot(live.counters, COUNTERS_FRAMES, index_one) < 0 ||
                 set_slot(live.counters, COUNTERS_LAST_EXCHANGE_TS, exchange_ts) < 0 ||
                 !(lag = PyNumber_Subtract(receive_ts, exchange_ts)) ||
                 set_slot(live.counters, COUNTERS_RECEIVE_LAG_NS, lag) < 0 ||
                 live_sequenced(connector, feed, &live, args[2], args[3], args[4], exchange_ts, receive_ts) < 0;
    Py_XDECREF(lag);
    release(&live);
    if (failed)
        return NULL;
    Py_RETURN_NONE;
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

/* an attribute of `owner` as a long (Side.BID), or a new reference to it (Reason.CROSSED) */
static int long_attribute(PyObject *owner, const char *name, long *value) {
    PyObject *member = PyObject_GetAttrString(owner, name);
    if (member == NULL)
        return -1;
    *value = PyLong_AsLong(member);
    Py_DECREF(member);
    return *value == -1 && PyErr_Occurred() ? -1 : 0;
}

/* configure_feeds(SymbolFeed, SymbolCounters, L2Book, SymbolRecords, Reason, Side): the slots and
 * constants of base.py and shm/records.py that the feed functions use */
static PyObject *configure_feeds(PyObject *module, PyObject *args) {
    PyObject *owners[4], *reason, *side;
    if (!PyArg_ParseTuple(args, "O!O!O!O!OO", &PyType_Type, &owners[0], &PyType_Type, &owners[1], &PyType_Type,
                          &owners[2], &PyType_Type, &owners[3], &reason, &side))
        return NULL;
    PyMemberDescrObject *found[SLOT_COUNT] = {NULL};
    PyObject *reasons[3] = {NULL};
    int failed = 0;
    for (int slot = 0; slot < SLOT_COUNT && !failed; slot++) {
        PyObject *owner = owners[slot_names[slot].owner];
        PyObject *descriptor = PyObject_GetAttrString(owner, slot_names[slot].name);
        failed = descriptor == NULL;
        if (!failed && !(Py_IS_TYPE(descriptor, &PyMemberDescr_Type) && PyDescr_TYPE(descriptor) == (PyTypeObject *)owner &&
                         ((PyMemberDescrObject *)descriptor)->d_member->type == T_OBJECT_EX &&
                         ((PyMemberDescrObject *)descriptor)->d_member->flags == 0)) {
            PyErr_Format(PyExc_TypeError, "%R.%s is not a writable __slots__ member", owner, slot_names[slot].name);
            Py_DECREF(descriptor);
            failed = 1;
        }
        if (!failed)
            found[slot] = (PyMemberDescrObject *)descriptor;
    }
    const char *reason_names[3] = {"CROSSED", "CROSS_CHECK", "MALFORMED"};
    for (int i = 0; i < 3 && !failed; i++)
        failed = (reasons[i] = PyObject_GetAttrString(reason, reason_names[i])) == NULL;
    long bid = 0, ask = 0;
    failed = failed || long_attribute(side, "BID", &bid) < 0 || long_attribute(side, "ASK", &ask) < 0;
    if (failed) {
        for (int slot = 0; slot < SLOT_COUNT; slot++)
            Py_XDECREF(found[slot]);
        for (int i = 0; i < 3; i++)
            Py_XDECREF(reasons[i]);
        return NULL;
    }
    for (int slot = 0; slot < SLOT_COUNT; slot++) {
        Py_XSETREF(slots[slot].descriptor, found[slot]);
        slots[slot].owner = PyDescr_TYPE(found[slot]);
        slots[slot].offset = found[slot]->d_member->offset;
    }
    Py_XSETREF(reason_crossed, reasons[0]);
    Py_XSETREF(reason_cross_check, reasons[1]);
    Py_XSETREF(reason_malformed, reasons[2]);
    side_bid = bid;
    side_ask = ask;
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
    {"change_sequence", change_sequence, METH_O,
     "change_sequence(change) -> int: int(change[2]) of a [price, size, sequence] change, ValueError for another length"},
    {"apply_sequenced_frame", (PyCFunction)(void (*)(void))apply_sequenced_frame, METH_FASTCALL,
     "apply_sequenced_frame(book, records, raw_bids, raw_asks, sequence, exchange_ts, receive_ts) -> count"},
    {"publish_live_delta", (PyCFunction)(void (*)(void))publish_live_delta, METH_FASTCALL,
     "publish_live_delta(connector, feed, count, last_id, exchange_ts, receive_ts) -> None"},
    {"apply_live_sequenced_delta", (PyCFunction)(void (*)(void))apply_live_sequenced_delta, METH_FASTCALL,
     "apply_live_sequenced_delta(connector, feed, last_id, bids, asks, exchange_ts, receive_ts) -> None"},
    {"configure", configure, METH_VARARGS, "configure(max_price, max_size): the validation bounds"},
    {"configure_feeds", configure_feeds, METH_VARARGS,
     "configure_feeds(SymbolFeed, SymbolCounters, L2Book, SymbolRecords, Reason, Side): what the feed functions read"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_kernel", NULL, -1, methods};

static int intern(PyObject **name, const char *text) {
    return (*name = PyUnicode_InternFromString(text)) == NULL ? -1 : 0;
}

PyMODINIT_FUNC PyInit__kernel(void) {
    index_zero = PyLong_FromLong(0);
    index_one = PyLong_FromLong(1);
    index_two = PyLong_FromLong(2);
    if (index_zero == NULL || index_one == NULL || index_two == NULL || intern(&name_truncate, "_truncate") < 0 ||
        intern(&name_resync, "_resync") < 0 || intern(&name_check_expected_tops, "_check_expected_tops") < 0 ||
        intern(&name_after_write, "_after_write") < 0 || intern(&name_depth_limit, "depth_limit") < 0 ||
        intern(&name_frame_rejected, "frame_rejected") < 0 || intern(&name_output, "output") < 0 ||
        intern(&name_lost, "lost") < 0 ||
        intern(&name_batches, "batches") < 0 || intern(&name_reserve, "reserve") < 0 || intern(&name_sort, "sort") < 0 ||
        intern(&name_key, "key") < 0 || intern(&text_zero, "0") < 0 ||
        (sort_key_names = PyTuple_Pack(1, name_key)) == NULL)
        return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    if (PyModule_AddIntConstant(module, "RECORD_BYTES", RECORD_BYTES) < 0 ||
        PyModule_AddIntConstant(module, "SIDE_OFFSET", SIDE_OFFSET) < 0 ||
        (change_sequence_function = PyObject_GetAttrString(module, "change_sequence")) == NULL) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
