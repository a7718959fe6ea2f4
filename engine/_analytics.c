/*
 * The consolidated book's per-publish work in C: the published copy of a side, each
 * member's best level, the metrics, the price buckets, and the feature rows' level grid.
 *
 * Optional: engine/microstructure.py, engine/features.py and actors/aggregator.py use it when
 * it compiled and fall back to numpy otherwise (tests/test_cob.py, test_features_layout.py and
 * test_aggregator.py check both give the same bytes). Every value is the same IEEE operation,
 * in the same order, as the numpy code it replaces:
 *   - a distance is (mid - price) / mid * 1e4 (bids) or (price - mid) / mid * 1e4 (asks);
 *   - running sums add level after level, from the first level as np.add.accumulate does, or
 *     from 0.0 per bin as np.bincount does;
 *   - nothing is fused or reordered: built with -ffp-contract=off (no FMA), SSE2 doubles.
 * numpy's side of every sum is a plain loop too (np.add.accumulate, np.bincount), never a BLAS
 * product or a pairwise np.sum. Arrays come through the buffer protocol (no numpy headers needed
 * to build).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { PRICE = 0, SIZE = 1, ORDERS = 2, FIRST_EXCHANGE = 3 };

/* A float64 (or other) array seen through the buffer protocol, with its strides in bytes. */
typedef struct {
    Py_buffer view;
    char *data;
    Py_ssize_t rows, cols;
    Py_ssize_t row_stride, col_stride;
} Array;

static void release(Array *array) {
    if (array->data != NULL) {
        PyBuffer_Release(&array->view);
        array->data = NULL;
    }
}

/* ``format``: the struct character wanted ('d' float64, 'q' int64); ``ndim`` 1 or 2. */
static int get_array(PyObject *object, Array *array, char format, int ndim, int writable, const char *name) {
    array->data = NULL;
    if (PyObject_GetBuffer(object, &array->view, PyBUF_RECORDS_RO | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    const char *got = array->view.format ? array->view.format : "B";
    if (*got == '<' || *got == '=' || *got == '@')
        got++;
    int format_ok = got[0] == format && got[1] == '\0';
    if (format == 'q' && got[0] == 'l' && got[1] == '\0' && array->view.itemsize == 8)
        format_ok = 1;
    if (!format_ok || array->view.ndim != ndim || array->view.itemsize != 8) {
        PyBuffer_Release(&array->view);
        PyErr_Format(PyExc_TypeError, "%s: expected a %d-d array of '%c' (8 bytes), got %d-d '%s'", name, ndim,
                     format, array->view.ndim, array->view.format ? array->view.format : "B");
        return -1;
    }
    array->data = array->view.buf;
    array->rows = array->view.shape[0];
    array->row_stride = array->view.strides[0];
    array->cols = ndim == 2 ? array->view.shape[1] : 1;
    array->col_stride = ndim == 2 ? array->view.strides[1] : 8;
    return 0;
}

#define AT(array, row, col) (*(double *)((array).data + (row) * (array).row_stride + (col) * (array).col_stride))
#define AT1(array, row) (*(double *)((array).data + (row) * (array).row_stride))

static double distance(double price, double mid, int is_bid) {
    if (mid <= 0.0)
        return 0.0;
    double offset = is_bid ? mid - price : price - mid;
    return offset / mid * 1e4;
}

/* column_tops(block, price_out, size_out): a side's working block (rows worst first, columns
 * price, size, orders, then one size per member) → each member's best price and its size
 * there (0 where the member has no level). */
static PyObject *column_tops(PyObject *self, PyObject *args) {
    PyObject *block_object, *price_object, *size_object;
    if (!PyArg_ParseTuple(args, "OOO", &block_object, &price_object, &size_object))
        return NULL;
    Array block, price, size;
    if (get_array(block_object, &block, 'd', 2, 0, "block") < 0)
        return NULL;
    if (get_array(price_object, &price, 'd', 1, 1, "price_out") < 0) {
        release(&block);
        return NULL;
    }
    if (get_array(size_object, &size, 'd', 1, 1, "size_out") < 0) {
        release(&block);
        release(&price);
        return NULL;
    }
    Py_ssize_t members = block.cols - FIRST_EXCHANGE;
    if (members < 0 || price.rows != members || size.rows != members) {
        release(&block);
        release(&price);
        release(&size);
        PyErr_SetString(PyExc_ValueError, "column_tops: outputs need one value per member column");
        return NULL;
    }
    Py_ssize_t missing = members;
    for (Py_ssize_t member = 0; member < members; member++) {
        AT1(price, member) = 0.0;
        AT1(size, member) = -1.0; /* not found yet */
    }
    for (Py_ssize_t row = block.rows - 1; row >= 0 && missing; row--) {
        for (Py_ssize_t member = 0; member < members; member++) {
            double value = AT(block, row, FIRST_EXCHANGE + member);
            if (value > 0.0 && AT1(size, member) < 0.0) {
                AT1(price, member) = AT(block, row, PRICE);
                AT1(size, member) = value;
                missing--;
            }
        }
    }
    for (Py_ssize_t member = 0; member < members; member++)
        if (AT1(size, member) < 0.0)
            AT1(size, member) = 0.0;
    release(&block);
    release(&price);
    release(&size);
    Py_RETURN_NONE;
}

/* The working block (worst first) into the published level matrix ``dest`` best first, rows
 * ``count..previous`` of dest zeroed. With ``mapping`` NULL the columns are the same; otherwise
 * (int64, one per member) each member's sizes are added into its exchange's column, members in
 * column order from 0.0. 0, or -1 with an exception set. */
static int copy_block(const Array *block, const Array *dest, Py_ssize_t previous, const Array *mapping) {
    Py_ssize_t count = block->rows, members = block->cols - FIRST_EXCHANGE;
    int direct = mapping == NULL;
    int ok = count <= dest->rows && previous <= dest->rows && members >= 0 && dest->col_stride == 8 &&
             block->col_stride == 8;
    if (ok && direct)
        ok = block->cols == dest->cols;
    if (ok && !direct) {
        ok = mapping->rows == members;
        for (Py_ssize_t member = 0; ok && member < members; member++) {
            int64_t exchange = *(int64_t *)(mapping->data + member * mapping->row_stride);
            ok = exchange >= 0 && FIRST_EXCHANGE + exchange < dest->cols;
        }
    }
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "publish_sides: a working block does not fit its level matrix");
        return -1;
    }
    for (Py_ssize_t rank = 0; rank < count; rank++) {
        const double *source = (const double *)(block->data + (count - 1 - rank) * block->row_stride);
        double *target = (double *)(dest->data + rank * dest->row_stride);
        if (direct) {
            memcpy(target, source, block->cols * sizeof(double));
            continue;
        }
        target[PRICE] = source[PRICE];
        target[SIZE] = source[SIZE];
        target[ORDERS] = source[ORDERS];
        for (Py_ssize_t column = FIRST_EXCHANGE; column < dest->cols; column++)
            target[column] = 0.0;
        for (Py_ssize_t member = 0; member < members; member++) {
            int64_t exchange = *(int64_t *)(mapping->data + member * mapping->row_stride);
            target[FIRST_EXCHANGE + exchange] += source[FIRST_EXCHANGE + member];
        }
    }
    for (Py_ssize_t rank = count; rank < previous; rank++)
        memset(dest->data + rank * dest->row_stride, 0, dest->cols * sizeof(double));
    return 0;
}

/* One side's prefix sums: for each of ``count`` limits, how many levels lie within it of the mid
 * (np.searchsorted side="right" over the distances, which grow along a side) and their summed
 * size (the running sum at that count, np.add.accumulate's order); the total size and notional
 * (price × size added level after level from the first, np.add.accumulate's order). 0, or -1
 * with an exception set. */
static int side_prefix(const Array *price, const Array *size, double mid, int is_bid, const double *limits,
                       Py_ssize_t count, Py_ssize_t *within, double *depth, double *total, double *notional) {
    Py_ssize_t levels = price->rows;
    for (Py_ssize_t k = 0; k < count; k++) {
        Py_ssize_t low = 0, high = levels; /* first level whose distance is above the limit */
        while (low < high) {
            Py_ssize_t middle = low + ((high - low) >> 1);
            if (distance(AT1(*price, middle), mid, is_bid) <= limits[k])
                low = middle + 1;
            else
                high = middle;
        }
        within[k] = low;
    }
    double *running = PyMem_Malloc((levels + 1) * sizeof(double));
    if (running == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    running[0] = 0.0;
    double value_sum = 0.0;
    for (Py_ssize_t level = 0; level < levels; level++) {
        double value = AT1(*size, level), product = AT1(*price, level) * value;
        running[level + 1] = level ? running[level] + value : value; /* np.add.accumulate starts at the first */
        value_sum = level ? value_sum + product : product;
    }
    *notional = value_sum;
    for (Py_ssize_t k = 0; k < count; k++)
        depth[k] = running[within[k]];
    *total = running[levels];
    PyMem_Free(running);
    return 0;
}

enum { M_MID, M_VW_MID, M_SPREAD, M_SPREAD_BPS, M_IMBALANCE_BPS, M_IMBALANCE, M_STEPS_BPS, M_BID_DEPTH, M_ASK_DEPTH,
       M_DOMINANCE_BPS, M_CROSS, M_CROSS_BPS, M_CROSS_BID, M_CROSS_ASK, M_EXCHANGE_SPREAD, M_TOTAL_BID, M_TOTAL_ASK,
       M_DOMINANCE, M_BID_NOTIONAL, M_ASK_NOTIONAL, M_FIELDS };

/* Each exchange's size in the first ``rows`` levels (np.add.accumulate along the levels: from
 * the first level, one level after the other), added into ``near``. */
static void add_near(const Array *exchange_size, Py_ssize_t rows, double *near) {
    for (Py_ssize_t e = 0; e < exchange_size->cols; e++) {
        double sum = 0.0;
        for (Py_ssize_t level = 0; level < rows; level++)
            sum = level ? sum + AT(*exchange_size, level, e) : AT(*exchange_size, level, e);
        near[e] += sum;
    }
}

/* The two best of one side's per-exchange prices, as sorted((-price, id))[:2] (bids) or
 * sorted((price, id))[:2] (asks) orders them: exchanges without a price (<= 0) left out. */
static int two_best(const Array *prices, int is_bid, Py_ssize_t *best) {
    int found = 0;
    for (Py_ssize_t e = 0; e < prices->rows; e++) {
        double price = AT1(*prices, e);
        if (!(price > 0.0))
            continue;
        double key = is_bid ? -price : price;
        if (found < 2)
            best[found++] = e;
        else {
            double last = is_bid ? -AT1(*prices, best[1]) : AT1(*prices, best[1]);
            if (key < last) /* a later exchange with an equal key sorts after */
                best[1] = e;
            else
                continue;
        }
        if (found == 2) {
            double first = is_bid ? -AT1(*prices, best[0]) : AT1(*prices, best[0]);
            double second = is_bid ? -AT1(*prices, best[1]) : AT1(*prices, best[1]);
            if (second < first || (second == first && best[1] < best[0])) {
                Py_ssize_t swap = best[0];
                best[0] = best[1];
                best[1] = swap;
            }
        }
    }
    return found;
}

/* Every metric of engine/microstructure.py fill_metrics into ``base`` (a metrics record of
 * ``record_len`` bytes; ``offset_values``: byte offsets of its fields, in the order of the M_
 * enum). Same operations, same order. 0, or -1 with an exception set. */
static int metrics_into(const Array *sides, const Array *best_bid_array, const Array *best_ask_array,
                        const Array *limits_array, Py_ssize_t imbalances, Py_ssize_t steps, char *base,
                        Py_ssize_t record_len, const Array *offsets_array) {
    /* sides: bid price, bid size, ask price, ask size, bid exchange sizes, ask exchange sizes */
    Array bid_price = sides[0], bid_size = sides[1], ask_price = sides[2], ask_size = sides[3];
    Array best_bid = *best_bid_array, best_ask = *best_ask_array, limits = *limits_array;
    Py_ssize_t count = limits.rows, exchanges = best_bid.rows;
    int ok = bid_size.rows == bid_price.rows && ask_size.rows == ask_price.rows && best_ask.rows == exchanges &&
             imbalances >= 0 && steps >= 0 && count == imbalances + steps + 1 && offsets_array->rows == M_FIELDS &&
             sides[4].rows == bid_price.rows && sides[5].rows == ask_price.rows &&
             sides[4].cols == exchanges && sides[5].cols == exchanges && limits.row_stride == 8;
    Py_ssize_t offsets[M_FIELDS];
    static const int lengths[M_FIELDS] = {1, 1, 1, 1, -1, -1, -2, -2, -2, 1, 1, 1, 0, 0, -3, 1, 1, -3, 1, 1};
    for (int field = 0; ok && field < M_FIELDS; field++) {
        offsets[field] = (Py_ssize_t) * (int64_t *)(offsets_array->data + field * offsets_array->row_stride);
        Py_ssize_t bytes = lengths[field] == 0 ? 2 : 8 * (lengths[field] == -1 ? imbalances
                                                        : lengths[field] == -2 ? steps
                                                        : lengths[field] == -3 ? exchanges : 1);
        ok = offsets[field] >= 0 && offsets[field] + bytes <= record_len;
    }
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "book_metrics: shapes do not fit");
        return -1;
    }
    int result = -1;
    Py_ssize_t *within = PyMem_Malloc(2 * count * sizeof(Py_ssize_t));
    double *depth = PyMem_Malloc(2 * count * sizeof(double));
    double *near = PyMem_Calloc(exchanges ? exchanges : 1, sizeof(double));
    if (within == NULL || depth == NULL || near == NULL) {
        PyErr_NoMemory();
        goto done;
    }
#define FIELD(name) ((double *)(base + offsets[name]))
    Py_ssize_t bids = bid_price.rows, asks = ask_price.rows;
    int both = bids && asks;
    double mid = both ? (AT1(bid_price, 0) + AT1(ask_price, 0)) / 2
                 : bids ? AT1(bid_price, 0) : asks ? AT1(ask_price, 0) : 0.0;
    double spread = both ? AT1(ask_price, 0) - AT1(bid_price, 0) : 0.0;
    double totals[2], notionals[2];
    const double *limit_values = (const double *)limits.data;
    if (side_prefix(&bid_price, &bid_size, mid, 1, limit_values, count, within, depth, &totals[0], &notionals[0]) < 0 ||
        side_prefix(&ask_price, &ask_size, mid, 0, limit_values, count, within + count, depth + count, &totals[1],
                    &notionals[1]) < 0)
        goto done;
    *FIELD(M_MID) = mid;
    if (both) {
        double bid = AT1(bid_price, 0), ask = AT1(ask_price, 0), bid_volume = AT1(bid_size, 0);
        double ask_volume = AT1(ask_size, 0);
        *FIELD(M_VW_MID) = (bid * ask_volume + ask * bid_volume) / (bid_volume + ask_volume);
    } else
        *FIELD(M_VW_MID) = mid;
    *FIELD(M_SPREAD) = spread;
    *FIELD(M_SPREAD_BPS) = both && mid > 0.0 ? spread / mid * 1e4 : 0.0;
    for (Py_ssize_t k = 0; k < imbalances; k++) {
        double bid = depth[k], ask = depth[count + k], total = bid + ask;
        FIELD(M_IMBALANCE_BPS)[k] = limit_values[k];
        FIELD(M_IMBALANCE)[k] = total > 0.0 ? (bid - ask) / total : 0.0;
    }
    for (Py_ssize_t k = 0; k < steps; k++) {
        FIELD(M_STEPS_BPS)[k] = limit_values[imbalances + k];
        FIELD(M_BID_DEPTH)[k] = depth[imbalances + k];
        FIELD(M_ASK_DEPTH)[k] = depth[count + imbalances + k];
    }
    *FIELD(M_DOMINANCE_BPS) = limit_values[count - 1];
    Py_ssize_t best_bids[2], best_asks[2];
    int bid_count = two_best(&best_bid, 1, best_bids), ask_count = two_best(&best_ask, 0, best_asks);
    double cross = 0.0;
    Py_ssize_t cross_bid = -1, cross_ask = -1;
    for (int i = 0; i < bid_count; i++) { /* min over (spread, bid id, ask id), ids distinct */
        for (int j = 0; j < ask_count; j++) {
            if (best_bids[i] == best_asks[j])
                continue;
            double candidate = AT1(best_ask, best_asks[j]) - AT1(best_bid, best_bids[i]);
            if (cross_bid < 0 || candidate < cross ||
                (candidate == cross && (best_bids[i] < cross_bid || (best_bids[i] == cross_bid && best_asks[j] < cross_ask)))) {
                cross = candidate;
                cross_bid = best_bids[i];
                cross_ask = best_asks[j];
            }
        }
    }
    *FIELD(M_CROSS) = cross;
    *FIELD(M_CROSS_BPS) = mid > 0.0 && cross_bid >= 0 ? cross / mid * 1e4 : 0.0;
    *(int16_t *)(base + offsets[M_CROSS_BID]) = (int16_t)cross_bid;
    *(int16_t *)(base + offsets[M_CROSS_ASK]) = (int16_t)cross_ask;
    for (Py_ssize_t e = 0; e < exchanges; e++) {
        double bid = AT1(best_bid, e), ask = AT1(best_ask, e);
        FIELD(M_EXCHANGE_SPREAD)[e] = bid > 0.0 && ask > 0.0 ? (ask - bid) / ((bid + ask) / 2) * 1e4 : 0.0;
    }
    *FIELD(M_TOTAL_BID) = totals[0];
    *FIELD(M_TOTAL_ASK) = totals[1];
    /* dominance: each exchange's bid size, then its ask size, within the last limit; their
     * total added exchange after exchange (np.add.accumulate's order) */
    add_near(&sides[4], within[count - 1], near);
    add_near(&sides[5], within[2 * count - 1], near);
    double near_total = 0.0;
    for (Py_ssize_t e = 0; e < exchanges; e++)
        near_total = e ? near_total + near[e] : near[e];
    for (Py_ssize_t e = 0; e < exchanges; e++)
        FIELD(M_DOMINANCE)[e] = near_total > 0.0 ? near[e] / near_total : 0.0;
    *FIELD(M_BID_NOTIONAL) = notionals[0];
    *FIELD(M_ASK_NOTIONAL) = notionals[1];
#undef FIELD
    result = 0;
done:
    PyMem_Free(within);
    PyMem_Free(depth);
    PyMem_Free(near);
    return result;
}

/* book_metrics(bid_price, bid_size, ask_price, ask_size, exchange_best_bid, exchange_best_ask,
 *              limits, imbalances, steps, record, offsets, bid_exchange_size, ask_exchange_size)
 * Every metric of engine/microstructure.py fill_metrics straight into the record. */
static PyObject *book_metrics(PyObject *self, PyObject *args) {
    PyObject *objects[9];
    Py_ssize_t imbalances, steps;
    PyObject *record_object, *offsets_object;
    if (!PyArg_ParseTuple(args, "OOOOOOOnnOOOO", &objects[0], &objects[1], &objects[2], &objects[3], &objects[4],
                          &objects[5], &objects[6], &imbalances, &steps, &record_object, &offsets_object,
                          &objects[7], &objects[8]))
        return NULL;
    static const int dims[9] = {1, 1, 1, 1, 1, 1, 1, 2, 2};
    static const char *names[9] = {"bid_price", "bid_size", "ask_price", "ask_size", "exchange_best_bid",
                                   "exchange_best_ask", "limits", "bid_exchange_size", "ask_exchange_size"};
    Array arrays[9], offsets_array = {.data = NULL};
    Py_buffer record;
    int have_record = 0;
    PyObject *result = NULL;
    Py_ssize_t held = 0;
    for (; held < 9; held++)
        if (get_array(objects[held], &arrays[held], 'd', dims[held], 0, names[held]) < 0)
            goto done;
    if (get_array(offsets_object, &offsets_array, 'q', 1, 0, "offsets") < 0 ||
        PyObject_GetBuffer(record_object, &record, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        goto done;
    have_record = 1;
    Array sides[6] = {arrays[0], arrays[1], arrays[2], arrays[3], arrays[7], arrays[8]};
    if (metrics_into(sides, &arrays[4], &arrays[5], &arrays[6], imbalances, steps, record.buf, record.len,
                     &offsets_array) == 0)
        result = Py_NewRef(Py_None);
done:
    for (Py_ssize_t i = 0; i < held; i++)
        release(&arrays[i]);
    release(&offsets_array);
    if (have_record)
        PyBuffer_Release(&record);
    return result;
}

/* One column of the first ``rows`` rows of a level matrix (``cols`` > 1: that many from it). */
static Array matrix_columns(const Array *matrix, Py_ssize_t rows, Py_ssize_t first, Py_ssize_t cols) {
    return (Array){.data = matrix->data + first * matrix->col_stride, .rows = rows, .cols = cols,
                   .row_stride = matrix->row_stride, .col_stride = matrix->col_stride};
}

/* publish_sides(bid_block, ask_block, bids, asks, previous_bids, previous_asks, column_exchange,
 *               exchange_best_bid, exchange_best_ask, limits, imbalances, steps, record, offsets)
 * A publish's level work in one call: each working block into its published level matrix
 * (best first, rows up to ``previous_*`` zeroed; ``column_exchange`` None or int64 per member,
 * as the blocks' columns map to exchange columns), then every metric of the published book into
 * ``record`` (as book_metrics on the matrices' columns, read back while they are in cache). */
static PyObject *publish_sides(PyObject *self, PyObject *args) {
    PyObject *objects[6], *mapping_object, *limits_object, *record_object, *offsets_object;
    Py_ssize_t previous[2], imbalances, steps;
    if (!PyArg_ParseTuple(args, "OOOOnnOOOOnnOO", &objects[0], &objects[1], &objects[2], &objects[3], &previous[0],
                          &previous[1], &mapping_object, &objects[4], &objects[5], &limits_object, &imbalances, &steps,
                          &record_object, &offsets_object))
        return NULL;
    static const int dims[6] = {2, 2, 2, 2, 1, 1};
    static const int writable[6] = {0, 0, 1, 1, 0, 0};
    static const char *names[6] = {"bid_block", "ask_block", "bids", "asks", "exchange_best_bid", "exchange_best_ask"};
    Array arrays[6], mapping = {.data = NULL}, limits = {.data = NULL}, offsets_array = {.data = NULL};
    Py_buffer record;
    int have_record = 0;
    PyObject *result = NULL;
    Py_ssize_t held = 0;
    for (; held < 6; held++)
        if (get_array(objects[held], &arrays[held], 'd', dims[held], writable[held], names[held]) < 0)
            goto done;
    if ((mapping_object != Py_None && get_array(mapping_object, &mapping, 'q', 1, 0, "column_exchange") < 0) ||
        get_array(limits_object, &limits, 'd', 1, 0, "limits") < 0 ||
        get_array(offsets_object, &offsets_array, 'q', 1, 0, "offsets") < 0 ||
        PyObject_GetBuffer(record_object, &record, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        goto done;
    have_record = 1;
    const Array *map = mapping_object == Py_None ? NULL : &mapping;
    if (copy_block(&arrays[0], &arrays[2], previous[0], map) < 0 || copy_block(&arrays[1], &arrays[3], previous[1], map) < 0)
        goto done;
    Py_ssize_t bids = arrays[0].rows, asks = arrays[1].rows, exchanges = arrays[2].cols - FIRST_EXCHANGE;
    Array sides[6] = {
        matrix_columns(&arrays[2], bids, PRICE, 1), matrix_columns(&arrays[2], bids, SIZE, 1),
        matrix_columns(&arrays[3], asks, PRICE, 1), matrix_columns(&arrays[3], asks, SIZE, 1),
        matrix_columns(&arrays[2], bids, FIRST_EXCHANGE, exchanges),
        matrix_columns(&arrays[3], asks, FIRST_EXCHANGE, exchanges),
    };
    if (metrics_into(sides, &arrays[4], &arrays[5], &limits, imbalances, steps, record.buf, record.len,
                     &offsets_array) == 0)
        result = Py_NewRef(Py_None);
done:
    for (Py_ssize_t i = 0; i < held; i++)
        release(&arrays[i]);
    release(&mapping);
    release(&limits);
    release(&offsets_array);
    if (have_record)
        PyBuffer_Release(&record);
    return result;
}

/* bucket_side(price, size, orders, exchange_size, relative, mid_or_first, width_or_unit,
 *             is_bid, record, size_at, notional_at, orders_at, exchange_at, buckets)
 * One side's buckets of one kind into a record (byte offsets of its four fields):
 *   relative: bucket floor(max(distance, 0) / width), the levels up to the first one past
 *             the last bucket (distances grow along a side);
 *   absolute: bucket floor((price - first) / unit + 1e-9), every level, those outside left out.
 * Each bucket adds its levels' size, price × size, order count and per-exchange sizes in level
 * order from 0.0 (np.bincount's order); order counts are then truncated to uint32. */
static PyObject *bucket_side(PyObject *self, PyObject *args) {
    PyObject *price_object, *size_object, *orders_object, *exchange_object, *record_object;
    int relative, is_bid;
    double origin, width;
    Py_ssize_t size_at, notional_at, orders_at, exchange_at, buckets;
    if (!PyArg_ParseTuple(args, "OOOOpddpOnnnnn", &price_object, &size_object, &orders_object, &exchange_object,
                          &relative, &origin, &width, &is_bid, &record_object, &size_at, &notional_at, &orders_at,
                          &exchange_at, &buckets))
        return NULL;
    Array price, size, orders, exchange;
    if (get_array(price_object, &price, 'd', 1, 0, "price") < 0)
        return NULL;
    if (get_array(size_object, &size, 'd', 1, 0, "size") < 0) {
        release(&price);
        return NULL;
    }
    if (get_array(orders_object, &orders, 'd', 1, 0, "orders") < 0) {
        release(&price);
        release(&size);
        return NULL;
    }
    if (get_array(exchange_object, &exchange, 'd', 2, 0, "exchange_size") < 0) {
        release(&price);
        release(&size);
        release(&orders);
        return NULL;
    }
    Py_buffer record;
    if (PyObject_GetBuffer(record_object, &record, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        release(&price);
        release(&size);
        release(&orders);
        release(&exchange);
        return NULL;
    }
    Py_ssize_t levels = price.rows, exchanges = exchange.cols;
    int ok = size.rows == levels && orders.rows == levels && exchange.rows == levels && buckets >= 0 &&
             size_at >= 0 && size_at + buckets * 8 <= record.len && notional_at >= 0 &&
             notional_at + buckets * 8 <= record.len && orders_at >= 0 && orders_at + buckets * 4 <= record.len &&
             exchange_at >= 0 && exchange_at + buckets * exchanges * 8 <= record.len;
    double *order_sums = ok ? PyMem_Calloc(buckets ? buckets : 1, sizeof(double)) : NULL;
    if (!ok || order_sums == NULL) {
        release(&price);
        release(&size);
        release(&orders);
        release(&exchange);
        PyBuffer_Release(&record);
        if (ok)
            return PyErr_NoMemory();
        PyErr_SetString(PyExc_ValueError, "bucket_side: shapes do not fit the record");
        return NULL;
    }
    char *base = record.buf;
    double *size_sums = (double *)(base + size_at), *notional_sums = (double *)(base + notional_at);
    double *exchange_sums = (double *)(base + exchange_at);
    uint32_t *order_counts = (uint32_t *)(base + orders_at);
    memset(size_sums, 0, buckets * sizeof(double));
    memset(notional_sums, 0, buckets * sizeof(double));
    memset(exchange_sums, 0, buckets * exchanges * sizeof(double));
    for (Py_ssize_t level = 0; level < levels; level++) {
        double level_price = AT1(price, level), bucket;
        if (relative) {
            double offset = distance(level_price, origin, is_bid);
            bucket = floor((offset > 0.0 ? offset : 0.0) / width);
            if (!(bucket < (double)buckets))
                break;
        } else {
            bucket = floor((level_price - origin) / width + 1e-9);
            if (!(bucket >= 0.0 && bucket < (double)buckets))
                continue;
        }
        Py_ssize_t index = (Py_ssize_t)bucket;
        double level_size = AT1(size, level);
        size_sums[index] += level_size;
        notional_sums[index] += level_price * level_size;
        order_sums[index] += AT1(orders, level);
        double *by_exchange = exchange_sums + index * exchanges;
        for (Py_ssize_t column = 0; column < exchanges; column++)
            by_exchange[column] += AT(exchange, level, column);
    }
    for (Py_ssize_t index = 0; index < buckets; index++)
        order_counts[index] = (uint32_t)order_sums[index];
    PyMem_Free(order_sums);
    release(&price);
    release(&size);
    release(&orders);
    release(&exchange);
    PyBuffer_Release(&record);
    Py_RETURN_NONE;
}

/* A C-contiguous buffer of ``count`` items of ``format`` ('d' float64, 'f' float32). */
static int get_flat(PyObject *object, Py_buffer *view, char format, Py_ssize_t count, int writable, const char *name) {
    if (PyObject_GetBuffer(object, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    const char *got = view->format ? view->format : "B";
    if (*got == '<' || *got == '=' || *got == '@')
        got++;
    Py_ssize_t itemsize = format == 'f' ? 4 : 8;
    if (got[0] != format || got[1] != '\0' || view->itemsize != itemsize || view->len != count * itemsize) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_ValueError, "%s: expected %zd contiguous '%c' items", name, count, format);
        return -1;
    }
    return 0;
}

/* size_or_one(size, out): each level's size, 1.0 where the level is missing (size <= 0), so
 * that its log is 0 and its shares divide by 1. */
static PyObject *size_or_one(PyObject *self, PyObject *args) {
    PyObject *size_object, *out_object;
    if (!PyArg_ParseTuple(args, "OO", &size_object, &out_object))
        return NULL;
    Py_buffer size, out;
    if (PyObject_GetBuffer(size_object, &size, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (get_flat(out_object, &out, 'd', size.len / 8, 1, "out") < 0 || size.len % 8) {
        PyBuffer_Release(&size);
        return NULL;
    }
    const double *sizes = size.buf;
    double *result = out.buf;
    for (Py_ssize_t index = 0; index < size.len / 8; index++)
        result[index] = sizes[index] <= 0.0 ? 1.0 : sizes[index];
    PyBuffer_Release(&size);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

/* level_grid(price, size, exchange_size, log_size, size_or_one, grid, has_book, mid, bid_scale,
 *            ask_scale, level_mean, size_scale, level_scaled, members_scale, clip_z)
 * The feature rows' level grid (engine/features.py FeatureComputer.compute): inputs [side, row]
 * float64 (exchange_size [exchange, side, row]), out float32 [side, row, feature]. Per level:
 * distance (mid - price) * scale, log size z (ln - mean) * scale clipped, largest exchange size
 * / size, exchanges quoting * members scale, running size / visible size; a missing level
 * (size <= 0) has distance 0 and log size z -clip. The numpy fallback's operations, in its order. */
static PyObject *level_grid(PyObject *self, PyObject *args) {
    PyObject *objects[6];
    int has_book, level_scaled;
    double mid, bid_scale, ask_scale, level_mean, size_scale, members_scale, clip_z;
    if (!PyArg_ParseTuple(args, "OOOOOOpdddddpdd", &objects[0], &objects[1], &objects[2], &objects[3], &objects[4],
                          &objects[5], &has_book, &mid, &bid_scale, &ask_scale, &level_mean, &size_scale,
                          &level_scaled, &members_scale, &clip_z))
        return NULL;
    Py_buffer price;
    if (PyObject_GetBuffer(objects[0], &price, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    Py_ssize_t cells = price.len / 8, rows = cells / 2;
    Py_buffer size, exchange, log_size, size_one, grid;
    Py_buffer *views[5] = {&size, &exchange, &log_size, &size_one, &grid};
    int got = 0;
    if (cells % 2 == 0 && price.len % 8 == 0 && get_flat(objects[1], &size, 'd', cells, 0, "size") == 0) {
        got = 1;
        if (PyObject_GetBuffer(objects[2], &exchange, PyBUF_C_CONTIGUOUS) == 0) {
            got = 2;
            if (get_flat(objects[3], &log_size, 'd', cells, 0, "log_size") == 0) {
                got = 3;
                if (get_flat(objects[4], &size_one, 'd', cells, 0, "size_or_one") == 0) {
                    got = 4;
                    if (get_flat(objects[5], &grid, 'f', cells * 5, 1, "grid") == 0)
                        got = 5;
                }
            }
        }
    }
    Py_ssize_t exchanges = got == 5 && cells ? exchange.len / 8 / cells : 0;
    if (got < 5 || exchange.len != exchanges * cells * 8 || exchanges < 1) {
        for (int i = 0; i < got; i++)
            PyBuffer_Release(views[i]);
        PyBuffer_Release(&price);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "level_grid: shapes do not fit");
        return NULL;
    }
    const double *prices = price.buf, *sizes = size.buf, *by_exchange = exchange.buf, *logs = log_size.buf;
    const double *divisors = size_one.buf;
    float *out = grid.buf;
    double visible = 0.0;
    for (int side = 0; side < 2; side++) {
        double running = 0.0;
        for (Py_ssize_t row = 0; row < rows; row++) {
            double level_size = sizes[side * rows + row];
            running = row ? running + level_size : level_size; /* np.add.accumulate starts at the first */
        }
        visible = side ? visible + running : running;
    }
    double visible_scale = visible > 0.0 ? 1.0 / visible : 0.0;
    for (int side = 0; side < 2; side++) {
        double distance_scale = side ? ask_scale : bid_scale, running = 0.0;
        for (Py_ssize_t row = 0; row < rows; row++) {
            Py_ssize_t cell = side * rows + row;
            double level_size = sizes[cell];
            double distance = (has_book ? mid - prices[cell] : 0.0) * distance_scale;
            double z = (level_scaled ? logs[cell] - level_mean : 0.0) * size_scale;
            if (level_scaled) {
                z = z <= clip_z ? z : clip_z;
                z = z >= -clip_z ? z : -clip_z;
            }
            double top = by_exchange[cell];
            double quoting = by_exchange[cell] > 0.0 ? 1.0 : 0.0;
            for (Py_ssize_t e = 1; e < exchanges; e++) {
                double value = by_exchange[e * cells + cell];
                top = value > top ? value : top;
                quoting += value > 0.0 ? 1.0 : 0.0;
            }
            top = top / divisors[cell] * 1.0;
            running = row ? running + level_size : level_size;
            if (level_size <= 0.0) {
                distance = 0.0;
                z = -clip_z;
            }
            float *features = out + cell * 5;
            features[0] = (float)distance;
            features[1] = (float)z;
            features[2] = (float)top;
            features[3] = (float)(quoting * members_scale);
            features[4] = (float)(running * visible_scale);
        }
    }
    for (int i = 0; i < 5; i++)
        PyBuffer_Release(views[i]);
    PyBuffer_Release(&price);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"column_tops", column_tops, METH_VARARGS, "Each member's best price and size on one side."},
    {"publish_sides", publish_sides, METH_VARARGS, "Both working blocks into their level matrices, then the metrics."},
    {"book_metrics", book_metrics, METH_VARARGS, "A book's metrics, into a record."},
    {"bucket_side", bucket_side, METH_VARARGS, "One side's buckets of one kind into a record."},
    {"size_or_one", size_or_one, METH_VARARGS, "Level sizes, 1.0 where a level is missing."},
    {"level_grid", level_grid, METH_VARARGS, "The feature rows' level grid, float32."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "engine._analytics", NULL, -1, methods};

PyMODINIT_FUNC PyInit__analytics(void) { return PyModule_Create(&module); }
