/* The range decoder and adaptive models of methods 0 and 2 (docs/FORMAT.md 3-4, docs/METHODS.md),
 * compiled: constriction decodes such tables one symbol at a time at 0.1-3 million symbols a second,
 * summing the whole probability table for every symbol. This file builds each cumulative table once
 * per row and finds symbols by binary search. It only decodes; files are written with constriction,
 * and the tests hold the two against each other.
 *
 * Loaded with ctypes (no Python API). Every index is bounded by the sizes the caller passes, which
 * Python checks against the header first; the payload's words are only ever read below n_words.
 */

#include <stdint.h>
#include <stdlib.h>

#if defined(_WIN32)
#define EXPORT __declspec(dllexport)
#else
#define EXPORT __attribute__((visibility("default")))
#endif

#define PRECISION 24
#define WORD_BITS 32

/* What the decoders return. */
#define DECODED 0         /* every symbol decoded and every word used */
#define UNDECODABLE 1     /* a quantile of 2^24 or more (FORMAT.md rule R1) */
#define WORDS_LEFT 2      /* symbols decoded, but words of the payload were never read */
#define CUT_SHORT 3       /* every word read, but they end where the encoder could not have stopped */
#define NO_MEMORY 4

typedef struct {
    const uint32_t *words;
    int64_t n_words, next;
    uint64_t lower, range, point;
} Decoder;

static uint64_t read_word(Decoder *d) {
    if (d->next >= d->n_words) return 0; /* past the end the stream reads as zeros */
    return d->words[d->next++];
}

static void start(Decoder *d, const uint32_t *words, int64_t n_words) {
    d->words = words;
    d->n_words = n_words;
    d->next = 0;
    d->lower = 0;
    d->range = UINT64_MAX;
    d->point = read_word(d) << WORD_BITS;
    d->point |= read_word(d);
}

/* One symbol from a cumulative table of n + 1 entries; -1 for an undecodable quantile. */
static int32_t decode_symbol(Decoder *d, const uint32_t *cumulative, int32_t n) {
    uint64_t scale = d->range >> PRECISION;
    uint64_t quantile = (d->point - d->lower) / scale;
    if (quantile >= ((uint64_t)1 << PRECISION)) return -1;
    /* The largest s with cumulative[s] <= quantile: a search without branches to mispredict. */
    int32_t low = 0, length = n;
    while (length > 1) {
        int32_t half = length / 2;
        low = cumulative[low + half] <= quantile ? low + half : low;
        length -= half;
    }
    d->lower += scale * cumulative[low];
    d->range = scale * (uint64_t)(cumulative[low + 1] - cumulative[low]);
    if (d->range < ((uint64_t)1 << WORD_BITS)) {
        d->lower <<= WORD_BITS;
        d->range <<= WORD_BITS;
        d->point = (d->point << WORD_BITS) | read_word(d);
    }
    return low;
}

/* After the last symbol, constriction's maybe_exhausted() split in two: every word read, and at most
 * the encoder's padding left (or nothing decoded at all). */
static int32_t ending(const Decoder *d) {
    uint64_t padding = ((uint64_t)1 << (64 - WORD_BITS + 1)) - 1;
    if (d->next < d->n_words) return WORDS_LEFT;
    return d->range == UINT64_MAX || d->point - d->lower < padding ? DECODED : CUT_SHORT;
}

/* FORMAT.md 4.1, from integer counts: p[s] = counts[s] / divisor in binary64 (divisor 0: p = counts). */
static void cumulative_table(const int64_t *counts, int32_t n, int64_t divisor, uint32_t *cumulative) {
    double partial = 0.0, total = 0.0;
    for (int32_t s = 0; s < n; s++) total += divisor ? (double)counts[s] / (double)divisor : (double)counts[s];
    double scale = (double)((1 << PRECISION) - n) / total;
    for (int32_t s = 0; s < n; s++) {
        cumulative[s] = (uint32_t)(partial * scale) + (uint32_t)s;
        partial += divisor ? (double)counts[s] / (double)divisor : (double)counts[s];
    }
    cumulative[n] = 1u << PRECISION;
}

/* Method 0 (FORMAT.md 3.3): symbols (channels x height x width) of the channels with sizes[c] > 1;
 * the others are left as they are. */
EXPORT int32_t decode_adaptive(const uint32_t *words, int64_t n_words, int32_t channels, int32_t height,
                               int32_t width, const int32_t *sizes, int32_t *symbols) {
    int64_t offsets_total = 0, largest = 2;
    for (int32_t c = 0; c < channels; c++) {
        offsets_total += sizes[c];
        if (sizes[c] > largest) largest = sizes[c];
    }
    int64_t *counts = malloc(sizeof(int64_t) * (size_t)(offsets_total + 1));
    int64_t *totals = malloc(sizeof(int64_t) * (size_t)(channels + 1));
    uint32_t *cumulative = malloc(sizeof(uint32_t) * (size_t)(largest + 1));
    if (!counts || !totals || !cumulative) {
        free(counts); free(totals); free(cumulative);
        return NO_MEMORY;
    }
    for (int64_t i = 0; i < offsets_total; i++) counts[i] = 1;
    for (int32_t c = 0; c < channels; c++) totals[c] = sizes[c];
    Decoder d;
    start(&d, words, n_words);
    int32_t status = DECODED;
    for (int32_t y = 0; y < height && status == DECODED; y++) {
        int64_t offset = 0;
        for (int32_t c = 0; c < channels; offset += sizes[c], c++) {
            int32_t n = sizes[c];
            if (n < 2) continue;
            int64_t *own = counts + offset;
            cumulative_table(own, n, totals[c], cumulative);
            int32_t *row = symbols + ((int64_t)c * height + y) * width;
            for (int32_t x = 0; x < width; x++) {
                int32_t s = decode_symbol(&d, cumulative, n);
                if (s < 0) { status = UNDECODABLE; break; }
                row[x] = s;
            }
            if (status != DECODED) break;
            for (int32_t x = 0; x < width; x++) own[row[x]] += 16;
            totals[c] += 16 * (int64_t)width;
            if (totals[c] > 65536) {
                totals[c] = 0;
                for (int32_t s = 0; s < n; s++) totals[c] += (own[s] = (own[s] + 1) / 2);
            }
        }
    }
    if (status == DECODED) status = ending(&d);
    free(counts); free(totals); free(cumulative);
    return status;
}

#define CONTEXTS 144
static const int64_t ACTIVITY_EDGES[] = {1, 2, 3, 4, 6, 8, 11, 15, 20, 28, 40};
static const int64_t CHANNEL_EDGES[] = {1, 2, 4, 6, 9, 13, 18, 26, 36, 52, 72};

static int32_t class_of(const int64_t *edges, int64_t value) {
    int32_t below = 0;
    while (below < 11 && edges[below] <= value) below++;
    return below;
}

#define LARGEST_EDGE 40

static int64_t magnitude(int32_t level) { return level < 0 ? -(int64_t)level : level; }

/* Method 2 (METHODS.md "Payload: the levels"): levels (channels x height x width) in [-largest, largest]. */
EXPORT int32_t decode_predictive(const uint32_t *words, int64_t n_words, int32_t channels, int32_t height,
                                 int32_t width, int32_t largest, int32_t *levels) {
    int32_t n = 2 * largest + 1;
    int64_t row_symbols = (int64_t)channels * width;
    int64_t *counts = malloc(sizeof(int64_t) * CONTEXTS * (size_t)n);
    uint32_t *tables = malloc(sizeof(uint32_t) * CONTEXTS * (size_t)(n + 1));
    int64_t *sums = malloc(sizeof(int64_t) * CONTEXTS);
    char *stale = malloc(CONTEXTS);
    int64_t *magnitudes = malloc(sizeof(int64_t) * (size_t)channels);
    uint8_t *contexts = malloc((size_t)row_symbols);
    if (!counts || !tables || !sums || !stale || !magnitudes || !contexts) {
        free(counts); free(tables); free(sums); free(stale); free(magnitudes); free(contexts);
        return NO_MEMORY;
    }
    for (int64_t i = 0; i < (int64_t)CONTEXTS * n; i++) counts[i] = 1;
    for (int32_t k = 0; k < CONTEXTS; k++) { sums[k] = n; stale[k] = 1; }
    for (int32_t c = 0; c < channels; c++) magnitudes[c] = 0;
    int32_t activity_classes[LARGEST_EDGE + 1]; /* activity above the last edge is class 11 */
    for (int32_t a = 0; a <= LARGEST_EDGE; a++) activity_classes[a] = class_of(ACTIVITY_EDGES, a);
    Decoder d;
    start(&d, words, n_words);
    int32_t status = DECODED;
    int64_t plane = (int64_t)height * width;
    for (int32_t y = 0; y < height && status == DECODED; y++) {
        int64_t seen = (int64_t)y * width;
        for (int32_t c = 0; c < channels && status == DECODED; c++) {
            int32_t channel_class = class_of(CHANNEL_EDGES, 16 * magnitudes[c] / (seen > 1 ? seen : 1));
            int32_t *row = levels + c * plane + (int64_t)y * width;
            const int32_t *above = y >= 1 ? row - width : row, *above2 = y >= 2 ? row - 2 * (int64_t)width : row;
            for (int32_t x = 0; x < width; x++) {
                int64_t activity = 0;
                if (y >= 1) {
                    activity += 2 * magnitude(above[x]);
                    if (x >= 1) activity += magnitude(above[x - 1]);
                    if (x + 1 < width) activity += magnitude(above[x + 1]);
                }
                if (y >= 2) activity += magnitude(above2[x]);
                int32_t context = 12 * channel_class + (activity > LARGEST_EDGE ? 11 : activity_classes[activity]);
                uint32_t *table = tables + (int64_t)context * (n + 1);
                if (stale[context]) {
                    cumulative_table(counts + (int64_t)context * n, n, 0, table);
                    stale[context] = 0;
                }
                int32_t s = decode_symbol(&d, table, n);
                if (s < 0) { status = UNDECODABLE; break; }
                row[x] = s - largest;
                contexts[(int64_t)c * width + x] = (uint8_t)context;
            }
        }
        if (status != DECODED) break;
        for (int32_t c = 0; c < channels; c++) {
            const int32_t *row = levels + c * plane + (int64_t)y * width;
            for (int32_t x = 0; x < width; x++) {
                int32_t context = contexts[(int64_t)c * width + x];
                counts[(int64_t)context * n + row[x] + largest] += 24;
                sums[context] += 24;
                stale[context] = 1;
                magnitudes[c] += magnitude(row[x]);
            }
        }
        for (int32_t k = 0; k < CONTEXTS; k++) {
            if (sums[k] <= 65536) continue;
            int64_t *own = counts + (int64_t)k * n;
            sums[k] = 0;
            for (int32_t s = 0; s < n; s++) sums[k] += (own[s] = (own[s] + 1) / 2);
        }
    }
    if (status == DECODED) status = ending(&d);
    free(counts); free(tables); free(sums); free(stale); free(magnitudes); free(contexts);
    return status;
}
