/* yunhan-cdpd: the storage process of one volume (spec 12 §4, §5, §7).
 *
 *   yunhan-cdpd --dir VOLDIR --mount MNT --size BYTES [--mode journal|plain]
 *               [--durability strict|flush] [--name NAME] [--threads N]
 *               [--checkpoint-every RECORDS] [--segment-bytes BYTES]
 *               [--fill-rate BYTES_PER_S]
 *
 * Serves the volume as one file, MNT/vol, on a FUSE mount (libfuse3, multithreaded),
 * meant to be looped by a loop device with 4 KiB sectors (or used with aligned O_DIRECT).
 *
 * --mode plain    writes go in place to VOLDIR/base.img (O_DIRECT); a FLUSH (FUSE fsync)
 *                 is an fdatasync of it. The unprotected volume.
 * --mode journal  base.img is only read; every write is journaled as yunhan/volume/journal.py
 *                 describes: its data O_DIRECT into the current segment's data.<k> at a
 *                 reserved 4 KiB-aligned position (writes in parallel), then, under one lock,
 *                 its 48-byte header with the next seq and the time appended to journal.<k>.
 *                 A new segment starts when the data log passes --segment-bytes (256 MiB; 0:
 *                 never) or on the control command "rotate". Reads come from
 *                 base + journal through an in-memory index (8 bytes per 4 KiB block).
 *                 A FLUSH appends a flush marker and returns once both logs are fdatasynced.
 *                 Discards and write-zeroes (FUSE fallocate) become ZERO records.
 * --durability strict (default)  a write is answered only once an fdatasync of the data log
 *                 and then the header log covers it; concurrent writes share one fdatasync
 *                 pair (group commit). Survives SIGKILL of this process and power loss.
 * --durability flush  a write is answered once its data is in the device (O_DIRECT) and its
 *                 header in the kernel: survives SIGKILL; a power cut keeps what the last
 *                 FLUSH covered (a disk with a write cache). For the bench's comparison.
 *
 * A clone or a restored generation (VOLDIR/parent) reads its parent's view at a seq until a
 * thread has copied it into base.img: see "parent view and background fill" below.
 *
 * Checkpoints (ck.<seq>, journal.py's format) are written by a thread every RECORDS records
 * once they are durable, and at a clean stop; a restart replays only what follows the newest.
 * Control: an abstract unix socket @yunhan-cdpd:<name> answers "stats", "checkpoint" and
 * "rotate" with one JSON line (yunhan.volume.cdpd.control).
 * Start: the journal is recovered first (headers in seq order up to the first one whose
 * magic, crc, seq, time, range or data crc32c does not check; the header log is cut there),
 * then the mount. A write that failed to reach the journal, or an fdatasync that failed,
 * leaves the volume failed: every later write and flush gets EIO (a failed fdatasync may
 * have dropped dirty pages; retrying it would lie). SIGTERM/SIGINT/SIGHUP: stop serving,
 * sync the journal, unmount, print the counters on stderr, exit 0.
 * Exit codes: 0 clean stop, 1 failure (the reason on stderr), 2 bad usage.
 */
#define FUSE_USE_VERSION 312
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <dirent.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <nmmintrin.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the journal is little endian; this build packs headers in host order"
#endif

#define BLK 4096u
#define MAGIC 0x59484A31u
#define MAX_DATA (1u << 20)
#define FLAG_FLUSH (1u << 31)
#define FLAG_ZERO (1u << 30)
#define LENGTH_MASK ((1u << 30) - 1)
#define MAX_ZERO (LENGTH_MASK & ~(BLK - 1))
#define IDX_BASE (-1)
#define IDX_ZERO (-2)
#define VOL_INO 2
#define ATTR_TIMEOUT 3600.0

struct __attribute__((packed)) hdr {
    uint32_t magic, hcrc;
    uint64_t seq, t_ns, off;
    uint32_t lenf, dcrc;
    uint64_t dpos;
};
_Static_assert(sizeof(struct hdr) == 48, "a header is 48 bytes");

static struct {
    const char *dir, *mnt, *name;
    uint64_t size;
    int journal, strict, threads;
    uint64_t ck_every, seg_bytes;
} cfg = {.strict = 1, .journal = 1, .threads = 16, .name = "volume", .ck_every = 20000,
         .seg_bytes = 256ull << 20};

static int bfd = -1, dfd = -1, hfd = -1;
static int64_t *idx; /* journal mode: per block, a data position or IDX_BASE / IDX_ZERO */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static uint64_t seq, durable, last_t; /* under mu */
static off_t hend;                     /* under mu: where the next header goes */
static int syncing, failed;            /* under mu: a thread is in fdatasync; the volume failed */
static _Atomic uint64_t dend;          /* next free data position */
static pthread_cond_t ck_cv = PTHREAD_COND_INITIALIZER;
static int ck_want, ck_stop;  /* under mu: the checkpoint thread is asked to write / to end */
static uint64_t ck_last_seq; /* under mu: seq of the last checkpoint written or loaded */
static atomic_ulong n_writes, n_reads, n_flushes, n_syncs, n_zero, n_bytes;

/* Segments (journal.py's docstring): dfd/hfd are the current segment's logs, `cur` its number;
 * every data log of the journal stays open in seg_dfd for reads. */
#define SEG_SHIFT 48
#define SEG_OFF(p) ((uint64_t)(p) & ((1ull << SEG_SHIFT) - 1))
#define SEG_NUM(p) ((uint64_t)(p) >> SEG_SHIFT)
#define MAX_SEGS 4096
#define MAX_SEG_NUM (1u << 15) /* an index entry is an int64: negative ones mean base or zero */
struct layout { /* the `segments` file; also a parent's (parent view) */
    uint32_t n;
    uint32_t num[MAX_SEGS];
    uint8_t compacted[MAX_SEGS];
    uint64_t base_seq, base_t;
};
static struct layout lay = {.n = 1};
static int seg_dfd[1 << 16];        /* by segment number: its data log, or -1 */
static uint64_t cur;                /* under mu (and rot_lock): the segment appended to */
static uint64_t hlast;              /* under mu: header position after the last record */
static pthread_rwlock_t rot_lock = PTHREAD_RWLOCK_INITIALIZER; /* writers: read; rotation: write */
static atomic_int pv_on; /* the parent view is served (see "parent view and background fill") */

static void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logmsg(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "yunhan-cdpd[%s]: ", cfg.name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* crc32c (Castagnoli) of the data: SSE4.2 when the CPU has it (~10x zlib's crc32, which the
 * spike measured as a real cost at 1 MiB writes), else a table. */
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(const void *p, size_t n) {
    const unsigned char *b = p;
    uint64_t c = 0xFFFFFFFFu;
    for (; n >= 8; n -= 8, b += 8) {
        uint64_t v;
        memcpy(&v, b, 8);
        c = _mm_crc32_u64(c, v);
    }
    for (; n; n--, b++) c = _mm_crc32_u8((uint32_t)c, *b);
    return (uint32_t)c ^ 0xFFFFFFFFu;
}

static uint32_t crc32c_table[256];

static uint32_t crc32c_sw(const void *p, size_t n) {
    const unsigned char *b = p;
    uint32_t c = 0xFFFFFFFFu;
    for (; n; n--, b++) c = crc32c_table[(c ^ *b) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static uint32_t (*crc32c)(const void *, size_t) = crc32c_hw;

/* YUNHAN_CDPD_SOFT_CRC=1 forces the table (tests hold both paths to the same journal). */
static void crc32c_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc32c_table[i] = c;
    }
    const char *soft = getenv("YUNHAN_CDPD_SOFT_CRC");
    if ((soft && *soft && strcmp(soft, "0")) || !__builtin_cpu_supports("sse4.2")) crc32c = crc32c_sw;
}

static uint32_t header_crc(const struct hdr *h) {
    return (uint32_t)crc32(0, (const Bytef *)&h->seq, sizeof *h - 8);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Whole-buffer pread/pwrite: 0, or -errno (EIO for an unexpected end of file). */
static int pread_all(int fd, void *buf, size_t n, off_t off) {
    char *p = buf;
    while (n) {
        ssize_t r = pread(fd, p, n, off);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -errno;
        if (r == 0) return -EIO;
        p += r, n -= (size_t)r, off += r;
    }
    return 0;
}

static int pwrite_all(int fd, const void *buf, size_t n, off_t off) {
    const char *p = buf;
    while (n) {
        ssize_t r = pwrite(fd, p, n, off);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -errno;
        if (r == 0) return -EIO;
        p += r, n -= (size_t)r, off += r;
    }
    return 0;
}

/* ---- journal ---------------------------------------------------------------------------- */

/* Append a header (seq and time taken here) and update the index. mu held. -errno on failure,
 * after which the volume is failed. */
static int append_locked(struct hdr *h) {
    if (failed) return -EIO;
    h->magic = MAGIC;
    h->seq = seq + 1;
    uint64_t t = now_ns();
    h->t_ns = t > last_t ? t : last_t + 1; /* strictly increasing, even if the clock steps back */
    h->hcrc = header_crc(h);
    int rc = pwrite_all(hfd, h, sizeof *h, hend);
    if (rc) {
        failed = 1;
        logmsg("append to the header log failed: %s; the volume is failed", strerror(-rc));
        return rc;
    }
    hend += (off_t)sizeof *h;
    hlast = cur << SEG_SHIFT | (uint64_t)hend;
    seq = h->seq;
    last_t = h->t_ns;
    if (cfg.ck_every && seq - ck_last_seq >= cfg.ck_every && !ck_want) {
        ck_want = 1;
        pthread_cond_signal(&ck_cv);
    }
    uint32_t len = h->lenf & LENGTH_MASK;
    if (!(h->lenf & FLAG_FLUSH)) {
        uint64_t b0 = h->off / BLK;
        for (uint32_t i = 0; i < len / BLK; i++)
            idx[b0 + i] = (h->lenf & FLAG_ZERO) ? IDX_ZERO : (int64_t)(h->dpos + (uint64_t)i * BLK);
    }
    return 0;
}

/* The data log's fdatasync runs on a thread of its own, beside the leader's fdatasync of the
 * header log. They need no order: a record whose header became durable before its data fails
 * its crc32c at recovery and ends the journal there, and it was never acknowledged (that
 * waits for both). So a commit costs one fdatasync's latency, not two in a row. */
static pthread_mutex_t ds_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ds_cv = PTHREAD_COND_INITIALIZER;
static uint64_t ds_asked, ds_done; /* under ds_mu: requests made, requests answered */
static int ds_fd = -1;             /* under ds_mu: the data log the request is for */
static int ds_rc, ds_ok;          /* under ds_mu: the first error; the thread runs */
static pthread_once_t ds_once = PTHREAD_ONCE_INIT;

static void *data_syncer(void *arg) {
    (void)arg;
    pthread_mutex_lock(&ds_mu);
    for (;;) {
        while (ds_done == ds_asked) pthread_cond_wait(&ds_cv, &ds_mu);
        uint64_t n = ds_asked;
        int fd = ds_fd;
        pthread_mutex_unlock(&ds_mu);
        int rc = fdatasync(fd) ? -errno : 0;
        pthread_mutex_lock(&ds_mu);
        if (rc && !ds_rc) ds_rc = rc;
        ds_done = n;
        pthread_cond_broadcast(&ds_cv);
    }
    return NULL;
}

static void data_syncer_start(void) {
    pthread_t t;
    if (!pthread_create(&t, NULL, data_syncer, NULL)) {
        pthread_detach(t); /* blocked on ds_cv when the process ends: nothing to join */
        ds_ok = 1;
    }
}

/* fdatasync of data log `sd` and header log `sh`, in parallel when the syncer thread could
 * be started. One caller at a time (the group commit's leader). */
static int sync_logs(int sd, int sh) {
    pthread_once(&ds_once, data_syncer_start);
    if (!ds_ok) return fdatasync(sd) ? -errno : (fdatasync(sh) ? -errno : 0);
    pthread_mutex_lock(&ds_mu);
    uint64_t mine = ++ds_asked;
    ds_fd = sd;
    pthread_cond_broadcast(&ds_cv);
    pthread_mutex_unlock(&ds_mu);
    int rc = fdatasync(sh) ? -errno : 0;
    pthread_mutex_lock(&ds_mu);
    while (ds_done < mine) pthread_cond_wait(&ds_cv, &ds_mu);
    if (!rc) rc = ds_rc;
    pthread_mutex_unlock(&ds_mu);
    return rc;
}

/* Return once an fdatasync of both logs covers record `upto` (group commit: one thread syncs
 * for every record appended so far, the others wait for it). mu held. */
static int wait_durable_locked(uint64_t upto) {
    while (durable < upto) {
        if (failed) return -EIO;
        if (syncing) {
            pthread_cond_wait(&cv, &mu);
            continue;
        }
        syncing = 1;
        uint64_t target = seq; /* every record up to seq is in the kernel: its data before it */
        int sd = dfd, sh = hfd; /* rotation changes them only while nobody syncs */
        pthread_mutex_unlock(&mu);
        int rc = sync_logs(sd, sh);
        n_syncs++;
        pthread_mutex_lock(&mu);
        syncing = 0;
        if (rc) {
            failed = 1;
            logmsg("fdatasync of the journal failed: %s; the volume is failed", strerror(-rc));
        } else if (target > durable) {
            durable = target;
        }
        pthread_cond_broadcast(&cv);
    }
    return 0;
}

static int journal_sync(void) {
    pthread_mutex_lock(&mu);
    int rc = wait_durable_locked(seq);
    pthread_mutex_unlock(&mu);
    return rc;
}

/* ---- segments ---------------------------------------------------------------------------
 * The `segments` file lists the journal's segments in order (journal.py's docstring); without
 * it the journal is segment 0 alone, as before segments, and it is first written at the first
 * rotation. A rotation starts segment max+1 (of the live ones: compacted segments are numbered
 * down from 32767) once every record appended is durable and nobody
 * is between reserving data and appending its header, so only the last segment can have a torn
 * tail; the new segment is listed (the file replaced atomically) before its first record. */

static uint64_t seg_dsize[1 << 16]; /* at recovery: each listed segment's data log size */

static int open_in(const char *name, int flags);
static int sync_dir(void);

static int layout_find(const struct layout *l, uint64_t n) {
    for (uint32_t i = 0; i < l->n; i++)
        if (l->num[i] == n) return (int)i;
    return -1;
}

static int seg_index(uint64_t n) {
    return layout_find(&lay, n);
}

static int seg_open(const char *kind, uint64_t n, int flags) {
    char name[32];
    snprintf(name, sizeof name, "%s.%05" PRIu64, kind, n);
    return open_in(name, flags);
}

/* Read DIR/segments into *l (absent: segment 0 alone): 0, or -errno after saying why. */
static int layout_read_in(const char *dir, struct layout *l) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/segments", dir);
    FILE *f = fopen(path, "re");
    if (!f) {
        if (errno != ENOENT) {
            logmsg("cannot read %s: %s", path, strerror(errno));
            return -errno;
        }
        l->n = 1, l->num[0] = 0, l->compacted[0] = 0, l->base_seq = l->base_t = 0;
        return 0;
    }
    int ok = fscanf(f, "YHSEG1 %" SCNu64 " %" SCNu64 "\n", &l->base_seq, &l->base_t) == 2;
    unsigned num;
    char kind[16];
    l->n = 0;
    while (ok && l->n < MAX_SEGS && fscanf(f, "%u %15s\n", &num, kind) == 2) {
        ok = num < MAX_SEG_NUM && (!strcmp(kind, "live") || !strcmp(kind, "compacted")) &&
             layout_find(l, num) < 0;
        l->num[l->n] = num;
        l->compacted[l->n++] = !strcmp(kind, "compacted");
    }
    ok = ok && l->n > 0 && feof(f);
    fclose(f);
    if (!ok) {
        logmsg("%s is not a segment list", path);
        return -EINVAL;
    }
    return 0;
}

static int layout_read(void) {
    return layout_read_in(cfg.dir, &lay);
}

static int layout_write(void) {
    char path[PATH_MAX], tmp[PATH_MAX];
    snprintf(path, sizeof path, "%s/segments", cfg.dir);
    snprintf(tmp, sizeof tmp, "%s/.segments.tmp", cfg.dir);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return -errno;
    int rc = dprintf(fd, "YHSEG1 %" PRIu64 " %" PRIu64 "\n", lay.base_seq, lay.base_t) < 0 ? -EIO : 0;
    for (uint32_t i = 0; !rc && i < lay.n; i++)
        if (dprintf(fd, "%u %s\n", lay.num[i], lay.compacted[i] ? "compacted" : "live") < 0) rc = -EIO;
    if (!rc && fdatasync(fd)) rc = -errno;
    close(fd);
    if (!rc && rename(tmp, path)) rc = -errno;
    if (rc) unlink(tmp);
    else rc = sync_dir();
    return rc;
}

/* Go on in a new segment (see above); only while the current one is still `from` (UINT64_MAX:
 * any). The current segment number after, or -errno. */
static int64_t rotate(uint64_t from) {
    pthread_rwlock_wrlock(&rot_lock);
    pthread_mutex_lock(&mu);
    int64_t rc = 0;
    while (!rc && !failed && (durable < seq || syncing)) {
        if (syncing) pthread_cond_wait(&cv, &mu);
        else rc = wait_durable_locked(seq);
    }
    if (failed) rc = -EIO;
    if (rc || (from != UINT64_MAX && from != cur)) goto out;
    uint64_t n = 0; /* live segments count up from 0, compacted ones down from 32767 */
    for (uint32_t i = 0; i < lay.n; i++)
        if (!lay.compacted[i] && lay.num[i] + 1u > n) n = lay.num[i] + 1u;
    if (seg_index(n) >= 0) n = MAX_SEG_NUM; /* they met */
    if (n >= MAX_SEG_NUM || lay.n >= MAX_SEGS) {
        rc = -ENOSPC;
        goto out;
    }
    int nd = seg_open("data", n, O_RDWR | O_CREAT | O_TRUNC | O_DIRECT);
    int nh = seg_open("journal", n, O_RDWR | O_CREAT | O_TRUNC);
    lay.num[lay.n] = (uint32_t)n, lay.compacted[lay.n++] = 0;
    rc = nd < 0 || nh < 0 ? -EIO : layout_write();
    if (rc) {
        lay.n--;
        if (nd >= 0) close(nd);
        if (nh >= 0) close(nh);
        logmsg("cannot start segment %05" PRIu64 ": %s", n, strerror((int)-rc));
        goto out;
    }
    seg_dfd[n] = nd;
    close(hfd);
    dfd = nd, hfd = nh, cur = n, hend = 0;
    dend = 0;
out:
    if (!rc) rc = (int64_t)cur;
    pthread_mutex_unlock(&mu);
    pthread_rwlock_unlock(&rot_lock);
    return rc;
}

/* ---- checkpoints ------------------------------------------------------------------------
 * ck.<seq, 20 digits>: journal.py's format. A 40-byte head (magic "YHCK", crc32 of the rest
 * of the head and of the index, seq, t_ns, header-log position after record seq, number of
 * blocks) then the index (int64 per block). Written to a temporary name, synced, renamed,
 * directory synced; only once every record it covers is durable. Recovery starts from the
 * newest one whose last record is still in the header log, so that a restart replays (and
 * crc-checks) only the records after it. */

struct __attribute__((packed)) ckhead {
    char magic[4];
    uint32_t crc;
    uint64_t seq, t_ns, hpos, nblocks;
};
_Static_assert(sizeof(struct ckhead) == 40, "a checkpoint head is 40 bytes");

static uint32_t ck_crc(const struct ckhead *c, const int64_t *blocks) {
    uLong crc = crc32(0, (const Bytef *)&c->seq, sizeof *c - 8);
    return (uint32_t)crc32_z(crc, (const Bytef *)blocks, c->nblocks * sizeof *blocks);
}

static int sync_dir(void) {
    int fd = open(cfg.dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -errno;
    int rc = fsync(fd) ? -errno : 0;
    close(fd);
    return rc;
}

static int write_checkpoint(const int64_t *blocks, uint64_t s, uint64_t t, uint64_t hp) {
    char path[PATH_MAX], tmp[PATH_MAX];
    snprintf(path, sizeof path, "%s/ck.%020" PRIu64, cfg.dir, s);
    snprintf(tmp, sizeof tmp, "%s/.ck.%020" PRIu64 ".tmp", cfg.dir, s);
    struct ckhead c = {.magic = {'Y', 'H', 'C', 'K'}, .seq = s, .t_ns = t, .hpos = hp, .nblocks = cfg.size / BLK};
    c.crc = ck_crc(&c, blocks);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return -errno;
    int rc = pwrite_all(fd, &c, sizeof c, 0);
    if (!rc) rc = pwrite_all(fd, blocks, c.nblocks * sizeof *blocks, sizeof c);
    if (!rc && fdatasync(fd)) rc = -errno;
    close(fd);
    if (!rc && rename(tmp, path)) rc = -errno;
    if (rc) unlink(tmp);
    else rc = sync_dir();
    return rc;
}

/* Snapshot the index at the current seq, wait until that seq is durable, write it. mu held on
 * entry and exit. */
static void checkpoint_locked(int64_t *copy) {
    uint64_t s = seq, t = last_t, hp = hlast;
    if (s == ck_last_seq) return;
    memcpy(copy, idx, cfg.size / BLK * sizeof *copy);
    if (wait_durable_locked(s)) return; /* the volume failed; it said so */
    ck_last_seq = s;
    pthread_mutex_unlock(&mu);
    int rc = write_checkpoint(copy, s, t, hp);
    pthread_mutex_lock(&mu);
    if (rc) logmsg("checkpoint at seq %" PRIu64 " not written: %s", s, strerror(-rc));
}

static void *checkpointer(void *arg) {
    int64_t *copy = arg;
    pthread_mutex_lock(&mu);
    for (;;) {
        while (!ck_want && !ck_stop) pthread_cond_wait(&ck_cv, &mu);
        if (ck_stop) break;
        ck_want = 0;
        checkpoint_locked(copy);
    }
    pthread_mutex_unlock(&mu);
    return NULL;
}

static int ck_name_cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0; /* newest first */
}

/* Load the newest usable checkpoint into idx/seq/last_t; its header-log position in *pos.
 * None usable: *pos = 0 and nothing changes. */
static void load_checkpoint(uint64_t *pos) {
    *pos = (uint64_t)lay.num[0] << SEG_SHIFT;
    DIR *dir = opendir(cfg.dir);
    if (!dir) return;
    uint64_t seqs[64];
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(dir))) {
        char *end;
        if (strncmp(e->d_name, "ck.", 3) || !e->d_name[3]) continue;
        uint64_t v = strtoull(e->d_name + 3, &end, 10);
        if (*end) continue;
        if (n < sizeof seqs / sizeof *seqs) seqs[n++] = v;
        else {
            qsort(seqs, n, sizeof *seqs, ck_name_cmp); /* keep the newest 64 */
            if (v > seqs[n - 1]) seqs[n - 1] = v;
        }
    }
    closedir(dir);
    qsort(seqs, n, sizeof *seqs, ck_name_cmp);
    for (size_t i = 0; i < n; i++) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/ck.%020" PRIu64, cfg.dir, seqs[i]);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        struct ckhead c;
        struct hdr h;
        int ok = !pread_all(fd, &c, sizeof c, 0) && !memcmp(c.magic, "YHCK", 4) &&
                 c.nblocks == cfg.size / BLK && c.seq == seqs[i] && c.hpos >= sizeof h &&
                 !pread_all(fd, idx, c.nblocks * sizeof *idx, sizeof c) && ck_crc(&c, idx) == c.crc;
        close(fd);
        /* its last record must still be this journal's (not cut by a crash and rewritten) */
        int sfd = ok && seg_index(SEG_NUM(c.hpos)) >= 0 && SEG_OFF(c.hpos) >= sizeof h
                      ? seg_open("journal", SEG_NUM(c.hpos), O_RDONLY) : -1;
        ok = ok && sfd >= 0 && !pread_all(sfd, &h, sizeof h, (off_t)(SEG_OFF(c.hpos) - sizeof h)) &&
             h.magic == MAGIC && h.hcrc == header_crc(&h) && h.seq == c.seq && h.t_ns == c.t_ns;
        if (sfd >= 0) close(sfd);
        /* and every block it maps must be in a listed data log (not cut since) */
        for (uint64_t b = 0; ok && b < c.nblocks; b++)
            ok = idx[b] < 0 || SEG_OFF(idx[b]) + BLK <= seg_dsize[SEG_NUM(idx[b])];
        if (ok) {
            seq = ck_last_seq = c.seq;
            last_t = c.t_ns;
            *pos = c.hpos;
            return;
        }
        logmsg("checkpoint %s not usable; trying an older one", path);
    }
    for (uint64_t b = 0; b < cfg.size / BLK; b++) idx[b] = IDX_BASE; /* a failed load wrote it */
}

/* Replay the header logs into the index from the newest usable checkpoint: every record that
 * checks, in seq order, segment after segment; cut the last segment's header log after the
 * last one (the tail after it was never acknowledged). A listed segment before the last that
 * ends early is damage, not a torn tail: refuse to start rather than drop what follows. */
static int recover(void) {
    char *buf = NULL;
    if (posix_memalign((void **)&buf, BLK, MAX_DATA)) return -ENOMEM;
    struct hdr h;
    uint64_t start;
    seq = lay.base_seq, last_t = lay.base_t;
    load_checkpoint(&start);
    hlast = start;
    uint64_t nrec = 0, from = seq;
    const char *why = "end of the header log";
    int rc = 0;
    for (int i = seg_index(SEG_NUM(start)); i >= 0 && i < (int)lay.n; i++) {
        uint64_t n = lay.num[i];
        int last = i == (int)lay.n - 1, fd = seg_open("journal", n, O_RDWR | (last ? O_CREAT : 0));
        if (fd < 0) {
            rc = -ENOENT;
            break;
        }
        off_t pos = n == SEG_NUM(start) ? (off_t)SEG_OFF(start) : 0;
        int early = 1;
        for (;;) {
            ssize_t r = pread(fd, &h, sizeof h, pos);
            if (r < 0) {
                rc = -errno;
                break;
            }
            if (r < (ssize_t)sizeof h) {
                if (r > 0) why = "partial header";
                else early = 0;
                break;
            }
            uint32_t len = h.lenf & LENGTH_MASK;
            int flush = !!(h.lenf & FLAG_FLUSH), zero = !!(h.lenf & FLAG_ZERO);
            if (h.magic != MAGIC || h.hcrc != header_crc(&h) || (flush && zero)) { why = "bad header"; break; }
            if ((lay.compacted[i] ? h.seq <= seq : h.seq != seq + 1) || h.t_ns < last_t) {
                why = "seq or time out of order";
                break;
            }
            if (flush) {
                if (len || h.off) { why = "flush marker with a range"; break; }
            } else {
                if (!len || len % BLK || h.off % BLK || h.off > cfg.size || len > cfg.size - h.off) {
                    why = "bad range";
                    break;
                }
                if (!zero) {
                    uint64_t ds = SEG_NUM(h.dpos), dp = SEG_OFF(h.dpos);
                    if (len > MAX_DATA || seg_index(ds) < 0 || dp % BLK || dp + len > seg_dsize[ds]) {
                        why = "data not in the data log";
                        break;
                    }
                    if (pread_all(seg_dfd[ds], buf, len, (off_t)dp) || crc32c(buf, len) != h.dcrc) {
                        why = "data crc";
                        break;
                    }
                }
            }
            uint64_t b0 = h.off / BLK;
            if (!flush)
                for (uint32_t k = 0; k < len / BLK; k++)
                    idx[b0 + k] = zero ? IDX_ZERO : (int64_t)(h.dpos + (uint64_t)k * BLK);
            seq = h.seq;
            last_t = h.t_ns;
            pos += (off_t)sizeof h;
            hlast = n << SEG_SHIFT | (uint64_t)pos;
            nrec++;
        }
        if (!last) {
            close(fd);
            if (!rc && early) {
                logmsg("segment %05" PRIu64 " ends early (%s at seq %" PRIu64 ") but is not the last: "
                       "the journal is damaged", n, why, seq + 1);
                rc = -EIO;
            }
            if (rc) break;
            continue;
        }
        if (!rc && (ftruncate(fd, pos) || fdatasync(fd))) rc = -errno;
        if (rc) {
            close(fd);
            break;
        }
        hfd = fd, dfd = seg_dfd[n], cur = n, hend = pos;
        /* New data goes after everything in the data log (holes of writes that never got a
         * header are simply not reused). */
        dend = (seg_dsize[n] + BLK - 1) / BLK * BLK;
    }
    free(buf);
    if (rc) return rc;
    if (hfd < 0) return -EIO; /* the checkpoint's segment is not listed: cannot happen */
    durable = seq;
    logmsg("recovered seq %" PRIu64 ": checkpoint at %" PRIu64 " + %" PRIu64 " records, stopped at: %s",
           seq, from, nrec, why);
    return 0;
}

/* ---- remap: compaction's switch ----------------------------------------------------------
 * "remap" reads VOLDIR/remap (yunhan/volume/compact.py writes it, synced): the first
 * `nremoved` listed segments give way to compacted segment `newseg` (or to nothing) and to
 * base.img (already written), and every index entry into them moves to its new position or
 * to base (the map: sorted pairs old -> new, new = IDX_BASE for folded data). Writes and reads
 * are held off meanwhile (rot_lock): a read copies positions and reads them under its read
 * lock, so none uses a position in a segment whose data log is then closed. Nothing changes
 * unless every entry is in the map and the new segment list is durable. Refused while the
 * volume still fills from a parent: an entry moved to IDX_BASE would read the parent view
 * for a block the fill has not copied (and the fill would copy over the folded data);
 * compact.py skips such a volume, this is the backstop. */

struct __attribute__((packed)) rmhead {
    char magic[4];
    uint32_t nremoved, newseg, pad;
    uint64_t base_seq, base_t, npairs, hlast_old, hlast_new;
};

static int rm_cmp(const void *key, const void *elem) {
    int64_t a = *(const int64_t *)key, b = *(const int64_t *)elem;
    return a < b ? -1 : a > b;
}

/* The new current segment list's first number, or -1 with `err` set. */
static int64_t remap(char *err, size_t errlen) {
    if (atomic_load(&pv_on)) { /* it only ever goes from 1 to 0 */
        snprintf(err, errlen, "the volume still fills from its parent: compact it once that is done");
        return -1;
    }
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/remap", cfg.dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st)) {
        snprintf(err, errlen, "cannot read the remap file: %s", strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    char *raw = malloc((size_t)st.st_size + 1);
    int rc = raw ? pread_all(fd, raw, (size_t)st.st_size, 0) : -ENOMEM;
    close(fd);
    struct rmhead h;
    size_t rlen = 0;
    if (!rc && (size_t)st.st_size >= sizeof h) {
        memcpy(&h, raw, sizeof h);
        rlen = ((size_t)h.nremoved * 4 + 7) / 8 * 8;
    }
    if (rc || (size_t)st.st_size < sizeof h || memcmp(h.magic, "YHRM", 4) || h.nremoved > MAX_SEGS ||
        h.npairs > (uint64_t)st.st_size || (size_t)st.st_size != sizeof h + rlen + h.npairs * 16) {
        snprintf(err, errlen, "the remap file is damaged");
        free(raw);
        return -1;
    }
    const uint32_t *removed = (const uint32_t *)(raw + sizeof h);
    const int64_t *pairs = (const int64_t *)(raw + sizeof h + rlen);
    int nd = -1;
    int64_t out = -1;
    uint8_t *gone = calloc(1u << 16, 1);
    pthread_rwlock_wrlock(&rot_lock);
    pthread_mutex_lock(&mu);
    if (!gone || h.nremoved >= lay.n) {
        snprintf(err, errlen, "the segment appended to cannot be compacted");
        goto out;
    }
    for (uint32_t i = 0; i < h.nremoved; i++) {
        if (removed[i] != lay.num[i]) {
            snprintf(err, errlen, "segment %u is not listed %u-th", removed[i], i + 1);
            goto out;
        }
        gone[removed[i]] = 1;
    }
    struct stat ns = {0};
    if (h.newseg != 0xFFFFFFFFu) {
        if (h.newseg >= MAX_SEG_NUM || seg_index(h.newseg) >= 0) {
            snprintf(err, errlen, "segment %u is in use", h.newseg);
            goto out;
        }
        nd = seg_open("data", h.newseg, O_RDWR | O_DIRECT);
        if (nd < 0 || fstat(nd, &ns)) {
            snprintf(err, errlen, "cannot open data.%05u", h.newseg);
            goto out;
        }
    }
    for (uint64_t b = 0; b < cfg.size / BLK; b++) {
        if (idx[b] >= 0 && gone[SEG_NUM(idx[b])] &&
            !bsearch(&idx[b], pairs, h.npairs, 16, rm_cmp)) {
            snprintf(err, errlen, "block %" PRIu64 " (at %" PRIx64 ") is not in the map", b, (uint64_t)idx[b]);
            goto out;
        }
    }
    uint32_t keep = lay.n - h.nremoved, first = h.newseg != 0xFFFFFFFFu;
    uint32_t onum[MAX_SEGS];
    uint8_t ocomp[MAX_SEGS];
    uint32_t on = lay.n;
    uint64_t obs = lay.base_seq, obt = lay.base_t;
    memcpy(onum, lay.num, sizeof onum);
    memcpy(ocomp, lay.compacted, sizeof ocomp);
    memmove(lay.num + first, onum + h.nremoved, keep * sizeof *lay.num);
    memmove(lay.compacted + first, ocomp + h.nremoved, keep);
    if (first) lay.num[0] = h.newseg, lay.compacted[0] = 1;
    lay.n = keep + first, lay.base_seq = h.base_seq, lay.base_t = h.base_t;
    rc = layout_write();
    if (rc) {
        memcpy(lay.num, onum, sizeof onum);
        memcpy(lay.compacted, ocomp, sizeof ocomp);
        lay.n = on, lay.base_seq = obs, lay.base_t = obt;
        snprintf(err, errlen, "cannot write the segment list: %s", strerror(-rc));
        goto out;
    }
    for (uint64_t b = 0; b < cfg.size / BLK; b++)
        if (idx[b] >= 0 && gone[SEG_NUM(idx[b])])
            idx[b] = ((const int64_t *)bsearch(&idx[b], pairs, h.npairs, 16, rm_cmp))[1];
    if (hlast == h.hlast_old) hlast = h.hlast_new;
    for (uint32_t i = 0; i < h.nremoved; i++) {
        close(seg_dfd[removed[i]]);
        seg_dfd[removed[i]] = -1, seg_dsize[removed[i]] = 0;
    }
    if (first) seg_dfd[h.newseg] = nd, seg_dsize[h.newseg] = (uint64_t)ns.st_size, nd = -1;
    ck_last_seq = 0; /* the next checkpoint is written even with no new record */
    out = first ? (int64_t)h.newseg : (int64_t)lay.num[0];
    logmsg("remapped: %u segments compacted into %s, base at seq %" PRIu64, h.nremoved,
           first ? "one" : "base.img", h.base_seq);
out:
    pthread_mutex_unlock(&mu);
    pthread_rwlock_unlock(&rot_lock);
    if (nd >= 0) close(nd);
    free(gone);
    free(raw);
    return out;
}

/* ---- parent view and background fill (clone and restore in constant time) --------------
 * VOLDIR/parent, one JSON object {"dir": "<parent volume dir>", "seq": S, "size": BYTES},
 * makes this volume a child of the parent volume as it was after record S. At start the
 * parent's index as of S is built (its newest usable checkpoint with seq <= S, then its
 * headers up to S through the segments its `segments` lists, checked as recovery checks
 * ours); the parent's files are only ever opened read only and read up to S (a running
 * parent keeps appending after S, also rotating into new segments; what is at or before S
 * never changes: compaction leaves a held parent alone, see yunhan/volume/compact.py). Its
 * data logs are opened as building the index needs them and stay open until the fill is
 * done. A block that this volume's base.img does not hold yet reads from the parent view;
 * a thread copies the parent view into base.img (blocks the parent maps to zeros or to a hole
 * of its base stay holes) and records which blocks base.img holds in a bitmap (bit b of byte
 * b / 8, LSB first), VOLDIR/fill.map, saved every second after an fdatasync of base.img, so
 * that a restart resumes. When every block is held: base.img is synced, parent then fill.map
 * removed, the parent's files closed.
 * --mode journal  base.img is the journal's start: the fill copies every block, also those
 *                 the child has journaled since (a restore of the child to before them reads
 *                 base.img).
 * --mode plain    child writes go to base.img: the fill never copies over one. A child write
 *                 marks its blocks busy (the fill keeps off) before its pwrite, and held after
 *                 it, in memory and in fill.map (unsynced: that survives SIGKILL; a FLUSH
 *                 syncs it) before it is answered. The fill writes under fmu and skips busy
 *                 and held blocks.
 * --fill-rate BYTES_PER_S limits the copy (0: as fast as it goes). */

static struct {
    char dir[PATH_MAX - 64];
    uint64_t seq, size, nblocks; /* the parent's seq and size (nblocks of it) */
    int bfd, mfd;                /* parent base.img (read only); our fill.map */
    int wfd;                     /* our base.img, buffered: the fill's writes (see parent_open) */
    struct layout lay;           /* the parent's `segments` */
    int dfd[MAX_SEG_NUM];        /* by segment number: the parent's data log (read only), or -1 */
    uint64_t dsize[MAX_SEG_NUM]; /* its size when opened (records up to seq are inside it) */
    uint32_t opened[MAX_SEGS], nopened; /* the segments whose data log is open */
    int64_t *idx;                /* the parent's index at seq */
    uint8_t *have, *busy, *saved; /* per block of ours: base.img holds it; a plain write is in
                                   * flight on it; what fill.map says */
    uint64_t nhave, rate, copied, t0; /* copied: bytes the fill wrote since t0, its start */
    int stop, failed;
} pv = {.bfd = -1, .mfd = -1, .wfd = -1};
static pthread_mutex_t fmu = PTHREAD_MUTEX_INITIALIZER; /* have, busy, saved, nhave, fill.map */
static pthread_cond_t fill_cv = PTHREAD_COND_INITIALIZER; /* with fmu: wakes the fill to stop */
static pthread_rwlock_t prw = PTHREAD_RWLOCK_INITIALIZER; /* readers of the parent's files */

#define BIT(m, b) ((m)[(b) >> 3] & (1u << ((b) & 7)))
#define SETBIT(m, b) ((m)[(b) >> 3] |= (uint8_t)(1u << ((b) & 7)))
#define CLRBIT(m, b) ((m)[(b) >> 3] &= (uint8_t)~(1u << ((b) & 7)))
#define FILL_CHUNK 256u /* blocks: 1 MiB */

static int open_in(const char *name, int flags);

static int parent_present(void) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/parent", cfg.dir);
    return access(path, F_OK) == 0;
}

/* The value of "key" in a flat JSON object: a string without escapes, or a number. */
static const char *json_value(const char *text, const char *key) {
    char k[64];
    snprintf(k, sizeof k, "\"%s\"", key);
    const char *p = strstr(text, k);
    if (!p) return NULL;
    p += strlen(k);
    while (*p == ' ' || *p == '\t' || *p == '\n') p++;
    if (*p++ != ':') return NULL;
    while (*p == ' ' || *p == '\t' || *p == '\n') p++;
    return p;
}

static int json_u64(const char *text, const char *key, uint64_t *v) {
    const char *p = json_value(text, key);
    char *end;
    if (!p || *p < '0' || *p > '9') return -1;
    errno = 0;
    *v = strtoull(p, &end, 10);
    return errno ? -1 : 0;
}

static int json_str(const char *text, const char *key, char *out, size_t n) {
    const char *p = json_value(text, key);
    if (!p || *p++ != '"') return -1;
    const char *end = strchr(p, '"');
    if (!end || (size_t)(end - p) >= n || memchr(p, '\\', (size_t)(end - p))) return -1;
    memcpy(out, p, (size_t)(end - p));
    out[end - p] = 0;
    return 0;
}

static int open_parent(const char *name, int must) {
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", pv.dir, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && (must || errno != ENOENT)) logmsg("cannot open the parent's %s: %s", path, strerror(errno));
    return fd;
}

/* The parent's data log of segment n (listed in its `segments`), opened read only at its
 * first use, its size taken then; -1 when it is not listed or cannot be opened (said why).
 * Used only while the view is built (one thread): every segment its index maps is opened
 * then, and parent_read finds them in pv.dfd. */
static int parent_data(uint64_t n) {
    if (n >= MAX_SEG_NUM) return -1;
    if (pv.dfd[n] >= 0) return pv.dfd[n];
    if (layout_find(&pv.lay, n) < 0) return -1;
    char name[32];
    snprintf(name, sizeof name, "data.%05" PRIu64, n);
    int fd = open_parent(name, 1);
    struct stat st;
    if (fd < 0) return -1;
    if (fstat(fd, &st)) {
        close(fd);
        return -1;
    }
    pv.dfd[n] = fd, pv.dsize[n] = (uint64_t)st.st_size;
    pv.opened[pv.nopened++] = (uint32_t)n;
    return fd;
}

static void parent_close_data(void) {
    for (uint32_t i = 0; i < pv.nopened; i++) close(pv.dfd[pv.opened[i]]), pv.dfd[pv.opened[i]] = -1;
    pv.nopened = 0;
}

static int parent_journal(uint64_t n) {
    char name[32];
    snprintf(name, sizeof name, "journal.%05" PRIu64, n);
    return open_parent(name, 1);
}

/* The parent's newest usable checkpoint with seq <= pv.seq into pv.idx, under the rule
 * load_checkpoint applies to ours (its last record still where it says, in a listed segment;
 * every block it maps inside a listed data log); its seq, time and header position. None:
 * the journal's start (`segments`' base, all IDX_BASE). */
static void parent_checkpoint(uint64_t *s, uint64_t *t, uint64_t *pos) {
    *s = pv.lay.base_seq, *t = pv.lay.base_t;
    *pos = (uint64_t)pv.lay.num[0] << SEG_SHIFT;
    DIR *dir = opendir(pv.dir);
    uint64_t best[16];
    size_t n = 0;
    struct dirent *e;
    while (dir && (e = readdir(dir))) {
        char *end;
        if (strncmp(e->d_name, "ck.", 3) || !e->d_name[3]) continue;
        uint64_t v = strtoull(e->d_name + 3, &end, 10);
        if (*end || v > pv.seq) continue;
        if (n < sizeof best / sizeof *best) best[n++] = v;
        else {
            qsort(best, n, sizeof *best, ck_name_cmp);
            if (v > best[n - 1]) best[n - 1] = v;
        }
    }
    if (dir) closedir(dir);
    qsort(best, n, sizeof *best, ck_name_cmp);
    for (size_t i = 0; i < n; i++) {
        char name[64];
        snprintf(name, sizeof name, "ck.%020" PRIu64, best[i]);
        int fd = open_parent(name, 0);
        if (fd < 0) continue;
        struct ckhead c;
        struct hdr h;
        int ok = !pread_all(fd, &c, sizeof c, 0) && !memcmp(c.magic, "YHCK", 4) && c.nblocks == pv.nblocks &&
                 c.seq == best[i] && c.seq >= pv.lay.base_seq &&
                 !pread_all(fd, pv.idx, c.nblocks * sizeof *pv.idx, sizeof c) && ck_crc(&c, pv.idx) == c.crc;
        close(fd);
        int hfd_p = ok && layout_find(&pv.lay, SEG_NUM(c.hpos)) >= 0 && SEG_OFF(c.hpos) >= sizeof h
                        ? parent_journal(SEG_NUM(c.hpos)) : -1;
        ok = ok && hfd_p >= 0 && !pread_all(hfd_p, &h, sizeof h, (off_t)(SEG_OFF(c.hpos) - sizeof h)) &&
             h.magic == MAGIC && h.hcrc == header_crc(&h) && h.seq == c.seq && h.t_ns == c.t_ns;
        if (hfd_p >= 0) close(hfd_p);
        for (uint64_t b = 0; ok && b < c.nblocks; b++)
            ok = pv.idx[b] < 0 ||
                 (parent_data(SEG_NUM(pv.idx[b])) >= 0 && SEG_OFF(pv.idx[b]) + BLK <= pv.dsize[SEG_NUM(pv.idx[b])]);
        if (ok) {
            *s = c.seq, *t = c.t_ns, *pos = c.hpos;
            return;
        }
        logmsg("the parent's %s/%s is not usable; trying an older one", pv.dir, name);
    }
    for (uint64_t b = 0; b < pv.nblocks; b++) pv.idx[b] = IDX_BASE;
}

/* Build the parent's index at pv.seq: its checkpoint, then its records up to pv.seq through
 * its segments in the order of its `segments` (journal.py's rules: in a live segment each seq
 * is the one before plus one, in a compacted one seqs only increase, so S may fall in a gap:
 * the view is then the state after the last record before it), each record checked as
 * recover() checks ours (also the data crc). */
static int parent_index(void) {
    pv.idx = malloc(pv.nblocks * sizeof *pv.idx);
    char *buf = NULL;
    if (!pv.idx || posix_memalign((void **)&buf, BLK, MAX_DATA)) {
        logmsg("no memory for the parent's index");
        return -1;
    }
    uint64_t s, t, start, nrec = 0;
    parent_checkpoint(&s, &t, &start);
    const char *why = NULL;
    uint64_t from = s;
    int done = s >= pv.seq;
    if (pv.seq < pv.lay.base_seq) why = "its journal now starts after it (compacted into its base.img)";
    for (int i = layout_find(&pv.lay, SEG_NUM(start)); !why && !done && i >= 0 && i < (int)pv.lay.n; i++) {
        uint64_t n = pv.lay.num[i];
        int hfd_p = parent_journal(n);
        if (hfd_p < 0) {
            why = "a listed header log cannot be opened";
            break;
        }
        off_t pos = n == SEG_NUM(start) ? (off_t)SEG_OFF(start) : 0;
        while (!why && !done) {
            struct hdr h;
            ssize_t r = pread(hfd_p, &h, sizeof h, pos);
            if (r == 0) break; /* this segment ends: the next one goes on */
            if (r < (ssize_t)sizeof h) {
                why = r < 0 ? "a header log cannot be read" : "partial header";
                break;
            }
            uint32_t len = h.lenf & LENGTH_MASK;
            int flush = !!(h.lenf & FLAG_FLUSH), zero = !!(h.lenf & FLAG_ZERO);
            uint64_t ds = SEG_NUM(h.dpos), dp = SEG_OFF(h.dpos);
            if (h.magic != MAGIC || h.hcrc != header_crc(&h) || (flush && zero)) why = "bad header";
            else if ((pv.lay.compacted[i] ? h.seq <= s : h.seq != s + 1) || h.t_ns < t) why = "seq or time out of order";
            else if (h.seq > pv.seq) done = 1; /* S is in a compacted segment's gap */
            else if (flush) why = len || h.off ? "flush marker with a range" : NULL;
            else if (!len || len % BLK || h.off % BLK || h.off > pv.size || len > pv.size - h.off) why = "bad range";
            else if (!zero && (len > MAX_DATA || parent_data(ds) < 0 || dp % BLK || dp + len > pv.dsize[ds]))
                why = "data not in the data log";
            else if (!zero && (pread_all(pv.dfd[ds], buf, len, (off_t)dp) || crc32c(buf, len) != h.dcrc))
                why = "data crc";
            if (why || done) break;
            if (!flush)
                for (uint32_t k = 0; k < len / BLK; k++)
                    pv.idx[h.off / BLK + k] = zero ? IDX_ZERO : (int64_t)(h.dpos + (uint64_t)k * BLK);
            s = h.seq, t = h.t_ns, pos += (off_t)sizeof h, nrec++;
            done = s == pv.seq;
        }
        close(hfd_p);
    }
    free(buf);
    if (!why && !done) why = "the header log ends";
    if (why) {
        logmsg("the parent %s does not reach seq %" PRIu64 ": %s after seq %" PRIu64, pv.dir, pv.seq, why, s);
        return -1;
    }
    logmsg("parent view of %s at seq %" PRIu64 ": checkpoint at %" PRIu64 " + %" PRIu64 " records, %u data logs",
           pv.dir, pv.seq, from, nrec, pv.nopened);
    return 0;
}

/* Read VOLDIR/parent, open the parent's files, build its index and load fill.map.
 * 0 without a parent file, or when the view is ready; -1 (said why) when it cannot be. */
static int parent_open(void) {
    char path[PATH_MAX], text[PATH_MAX + 256] = {0};
    snprintf(path, sizeof path, "%s/parent", cfg.dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return 0;
        logmsg("cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    ssize_t r = read(fd, text, sizeof text - 1);
    close(fd);
    if (r <= 0 || json_str(text, "dir", pv.dir, sizeof pv.dir) || json_u64(text, "seq", &pv.seq) ||
        json_u64(text, "size", &pv.size) || !pv.size || pv.size % BLK || pv.size > cfg.size) {
        logmsg("%s: not {\"dir\": DIR, \"seq\": SEQ, \"size\": BYTES} with a size of 4 KiB blocks up to ours",
               path);
        return -1;
    }
    pv.nblocks = pv.size / BLK;
    for (uint32_t i = 0; i < MAX_SEG_NUM; i++) pv.dfd[i] = -1;
    pv.bfd = open_parent("base.img", 1);
    if (pv.bfd < 0 || layout_read_in(pv.dir, &pv.lay) || parent_index()) return -1;
    uint64_t nb = cfg.size / BLK, nbytes = (nb + 7) / 8;
    pv.have = calloc(nbytes, 1);
    pv.busy = calloc(nbytes, 1);
    pv.saved = calloc(nbytes, 1);
    if (!pv.have || !pv.busy || !pv.saved) {
        logmsg("no memory for the fill bitmaps");
        return -1;
    }
    pv.mfd = open_in("fill.map", O_RDWR | O_CREAT);
    /* The fill writes through the page cache, synced before each save of fill.map: the
     * blocks it copies are scattered (journaled 4 KiB writes) and an O_DIRECT write into a
     * hole allocates synchronously, one block at a time (a 4 GiB clone with 32 MiB of random
     * writes: 0.75 s O_DIRECT, 0.11 s buffered). The kernel keeps the O_DIRECT reads and
     * writes of bfd coherent with it: it writes back and drops the cached pages of their
     * range first. */
    pv.wfd = open_in("base.img", O_RDWR);
    if (pv.mfd < 0 || pv.wfd < 0) return -1;
    struct stat st;
    if (!fstat(pv.mfd, &st) && (uint64_t)st.st_size == nbytes && !pread_all(pv.mfd, pv.saved, nbytes, 0))
        memcpy(pv.have, pv.saved, nbytes);
    else
        memset(pv.saved, 0, nbytes); /* none yet, or of another size: start over */
    if (nb % 8) pv.have[nbytes - 1] &= (uint8_t)((1u << (nb % 8)) - 1);
    for (uint64_t i = 0; i < nbytes; i++) pv.nhave += (uint64_t)__builtin_popcount(pv.have[i]);
    atomic_store(&pv_on, 1);
    logmsg("filling from the parent: %" PRIu64 " of %" PRIu64 " blocks already held", pv.nhave, nb);
    return 0;
}

/* Read blocks [b, b+n) of the parent view (zeros past the parent's size). */
static int parent_read(char *dst, uint64_t b, size_t n) {
    for (size_t i = 0; i < n;) {
        uint64_t x = b + i;
        size_t k = 1;
        char *d = dst + i * BLK;
        if (x >= pv.nblocks) {
            k = n - i;
            memset(d, 0, k * BLK);
        } else if (pv.idx[x] == IDX_ZERO) {
            memset(d, 0, BLK);
        } else if (pv.idx[x] == IDX_BASE) {
            while (i + k < n && x + k < pv.nblocks && pv.idx[x + k] == IDX_BASE) k++;
            ssize_t r = pread(pv.bfd, d, k * BLK, (off_t)(x * BLK));
            if (r < 0) return -errno;
            if ((size_t)r < k * BLK) memset(d + r, 0, k * BLK - (size_t)r);
        } else {
            while (i + k < n && x + k < pv.nblocks && pv.idx[x + k] == pv.idx[x] + (int64_t)(k * BLK)) k++;
            int rc = pread_all(pv.dfd[SEG_NUM(pv.idx[x])], d, k * BLK, (off_t)SEG_OFF(pv.idx[x]));
            if (rc) return rc;
        }
        i += k;
    }
    return 0;
}

static int base_pread(char *dst, uint64_t b, size_t n) {
    ssize_t r = pread(bfd, dst, n * BLK, (off_t)(b * BLK));
    if (r < 0) return -errno;
    if ((size_t)r < n * BLK) memset(dst + r, 0, n * BLK - (size_t)r); /* short base */
    return 0;
}

/* Blocks [b, b+n) of what base.img stands for: base.img where it holds them, else the parent
 * view. */
static int base_read(char *dst, uint64_t b, size_t n) {
    if (!atomic_load(&pv_on)) return base_pread(dst, b, n);
    pthread_rwlock_rdlock(&prw);
    uint8_t *held = malloc(n);
    if (!held) {
        pthread_rwlock_unlock(&prw);
        return -ENOMEM;
    }
    pthread_mutex_lock(&fmu);
    int on = atomic_load(&pv_on);
    for (size_t i = 0; on && i < n; i++) held[i] = !!BIT(pv.have, b + i);
    pthread_mutex_unlock(&fmu);
    int rc = 0;
    for (size_t i = 0; i < n && !rc;) {
        size_t k = 1;
        if (!on) k = n - i;
        else
            while (i + k < n && held[i + k] == held[i]) k++;
        rc = !on || held[i] ? base_pread(dst + i * BLK, b + i, k) : parent_read(dst + i * BLK, b + i, k);
        i += k;
    }
    free(held);
    pthread_rwlock_unlock(&prw);
    return rc;
}

/* --mode plain: a child write of [off, off+len) starts / has ended (ok: it reached base.img). */
static void plain_write_begin(uint64_t off, uint64_t len) {
    if (!atomic_load(&pv_on)) return;
    pthread_mutex_lock(&fmu);
    for (uint64_t b = off / BLK; b < (off + len) / BLK; b++) SETBIT(pv.busy, b);
    pthread_mutex_unlock(&fmu);
}

static void plain_write_end(uint64_t off, uint64_t len, int ok) {
    if (!atomic_load(&pv_on)) return;
    pthread_mutex_lock(&fmu);
    uint64_t b0 = off / BLK, b1 = (off + len) / BLK;
    for (uint64_t b = b0; b < b1; b++) {
        CLRBIT(pv.busy, b);
        if (!ok) continue;
        if (!BIT(pv.have, b)) pv.nhave++;
        SETBIT(pv.have, b);
        SETBIT(pv.saved, b);
    }
    if (ok && atomic_load(&pv_on) && b1 > b0) {
        uint64_t y0 = b0 / 8, y1 = (b1 + 7) / 8;
        int rc = pwrite_all(pv.mfd, pv.saved + y0, y1 - y0, (off_t)y0);
        if (rc) logmsg("fill.map not updated: %s", strerror(-rc)); /* the fill then copies over it */
    }
    pthread_mutex_unlock(&fmu);
}

/* Save fill.map: only blocks whose copy an fdatasync of base.img covers. */
static int fill_save(uint8_t *snap) {
    uint64_t nbytes = (cfg.size / BLK + 7) / 8;
    pthread_mutex_lock(&fmu);
    memcpy(snap, pv.have, nbytes);
    pthread_mutex_unlock(&fmu);
    if (fdatasync(pv.wfd)) return -errno;
    pthread_mutex_lock(&fmu);
    for (uint64_t i = 0; i < nbytes; i++) pv.saved[i] |= snap[i];
    int rc = pwrite_all(pv.mfd, pv.saved, nbytes, 0);
    pthread_mutex_unlock(&fmu);
    if (!rc && fdatasync(pv.mfd)) rc = -errno;
    return rc;
}

/* Does the parent's base.img have data (not a hole) at block b? b only grows between calls. */
static int parent_base_data(uint64_t b, off_t *data_at, off_t *hole_at) {
    off_t off = (off_t)(b * BLK);
    if (off >= *hole_at) {
        *data_at = lseek(pv.bfd, off, SEEK_DATA);
        if (*data_at < 0) {
            if (errno == ENXIO) *data_at = *hole_at = INT64_MAX; /* nothing but holes after */
            else *data_at = 0, *hole_at = INT64_MAX;             /* no SEEK_DATA: all data */
        } else {
            *hole_at = lseek(pv.bfd, *data_at, SEEK_HOLE);
            if (*hole_at < 0) *hole_at = INT64_MAX;
        }
    }
    return off >= *data_at && off < *hole_at;
}

static void fill_finish(void) {
    uint64_t t = now_ns() - pv.t0;
    int rc = fdatasync(pv.wfd) ? -errno : 0;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/parent", cfg.dir);
    if (!rc && unlink(path)) rc = -errno;
    if (!rc) rc = sync_dir();
    if (rc) {
        logmsg("fill done but not recorded (%s): a restart fills again", strerror(-rc));
        return;
    }
    pthread_mutex_lock(&fmu);
    atomic_store(&pv_on, 0);
    pthread_mutex_unlock(&fmu);
    pthread_rwlock_wrlock(&prw); /* no reader is in the parent's files any more */
    close(pv.bfd);
    pv.bfd = -1;
    parent_close_data();
    pthread_rwlock_unlock(&prw);
    snprintf(path, sizeof path, "%s/fill.map", cfg.dir);
    unlink(path);
    sync_dir();
    logmsg("fill done in %.3f s (%" PRIu64 " bytes copied): the parent %s is no longer read", (double)t / 1e9,
           pv.copied, pv.dir);
}

static void *filler(void *arg) {
    (void)arg;
    uint64_t nb = cfg.size / BLK, copied = 0, t0 = now_ns(), saved_at = t0;
    pv.t0 = t0;
    char *buf = NULL;
    uint8_t *snap = malloc((nb + 7) / 8), need[FILL_CHUNK];
    if (!snap || posix_memalign((void **)&buf, BLK, FILL_CHUNK * BLK)) {
        logmsg("no memory for the fill");
        free(snap);
        return NULL;
    }
    int rc = 0;
    pthread_mutex_lock(&fmu);
    while (!pv.stop && !rc && pv.nhave < nb) {
        off_t data_at = -1, hole_at = -1;
        for (uint64_t b0 = 0; b0 < nb && !pv.stop && !rc; b0 += FILL_CHUNK) {
            size_t n = nb - b0 < FILL_CHUNK ? (size_t)(nb - b0) : FILL_CHUNK, want = 0;
            for (size_t i = 0; i < n; i++) {
                uint64_t b = b0 + i;
                need[i] = 0;
                if (BIT(pv.have, b) || BIT(pv.busy, b)) continue;
                if (b < pv.nblocks && (pv.idx[b] >= 0 || (pv.idx[b] == IDX_BASE && parent_base_data(b, &data_at, &hole_at))))
                    need[i] = 1, want++;
                else
                    need[i] = 2; /* zeros or a hole in the parent: our hole already reads so */
            }
            if (want) { /* only the runs to copy: most of a chunk is often holes */
                pthread_mutex_unlock(&fmu);
                for (size_t i = 0, k; i < n && !rc; i += k) {
                    for (k = 1; i + k < n && (need[i + k] == 1) == (need[i] == 1); k++) {}
                    if (need[i] == 1) rc = parent_read(buf + i * BLK, b0 + i, k); /* only this thread closes them */
                }
                pthread_mutex_lock(&fmu);
            }
            /* Under fmu: a plain write that started meanwhile is busy or held; skip it. */
            for (size_t i = 0; i < n && !rc;) {
                size_t k = 1;
                uint64_t b = b0 + i;
                if (!need[i] || BIT(pv.have, b) || BIT(pv.busy, b)) {
                    i++;
                    continue;
                }
                if (need[i] == 1) {
                    while (i + k < n && need[i + k] == 1 && !BIT(pv.have, b + k) && !BIT(pv.busy, b + k)) k++;
                    rc = pwrite_all(pv.wfd, buf + i * BLK, k * BLK, (off_t)(b * BLK));
                    copied += k * BLK;
                }
                for (size_t j = 0; j < k && !rc; j++) SETBIT(pv.have, b + j), pv.nhave++;
                i += k;
            }
            uint64_t now = now_ns();
            if (pv.rate && copied) { /* sleep until the copy is back under the rate */
                uint64_t due = t0 + (uint64_t)((double)copied * 1e9 / (double)pv.rate);
                if (due > now) {
                    struct timespec ts;
                    clock_gettime(CLOCK_REALTIME, &ts);
                    uint64_t at = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec + (due - now);
                    ts.tv_sec = (time_t)(at / 1000000000ull), ts.tv_nsec = (long)(at % 1000000000ull);
                    while (!pv.stop && pthread_cond_timedwait(&fill_cv, &fmu, &ts) != ETIMEDOUT) {}
                }
            }
            if (now - saved_at >= 1000000000ull) {
                pthread_mutex_unlock(&fmu);
                int src = fill_save(snap);
                if (src) logmsg("fill.map not saved: %s", strerror(-src));
                saved_at = now_ns();
                pthread_mutex_lock(&fmu);
            }
        }
        if (pv.nhave < nb && !pv.stop && !rc) { /* blocks busy with a plain write: again soon */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 10000000;
            if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
            pthread_cond_timedwait(&fill_cv, &fmu, &ts);
        }
    }
    int done = pv.nhave >= nb && !rc;
    pv.copied = copied;
    pthread_mutex_unlock(&fmu);
    if (rc) {
        pv.failed = 1;
        logmsg("the fill stopped: %s; reads still come from the parent", strerror(-rc));
    }
    if (done) fill_finish();
    else if ((rc = fill_save(snap))) logmsg("fill.map not saved: %s", strerror(-rc));
    free(snap);
    free(buf);
    return NULL;
}

static void parent_close(void) {
    if (pv.bfd >= 0) close(pv.bfd);
    parent_close_data();
    if (pv.mfd >= 0) close(pv.mfd);
    if (pv.wfd >= 0) close(pv.wfd);
    pv.bfd = pv.mfd = pv.wfd = -1;
    free(pv.idx), free(pv.have), free(pv.busy), free(pv.saved);
    pv.idx = NULL, pv.have = pv.busy = pv.saved = NULL;
}

/* ---- control socket ---------------------------------------------------------------------
 * Abstract unix socket "@yunhan-cdpd:<name>" (no path to clean up, gone with the process),
 * one command line per connection, one JSON line back; peers must be root or our user.
 *   stats       counters, seq, durable seq, the last checkpoint, the segment appended to,
 *               space of the logs (every segment), parent and fill (the parent view)
 *   checkpoint  write a checkpoint now (once everything up to now is durable)
 *   rotate      go on in a new segment: {"segment": <its number>}; the ones before are sealed
 *   remap       switch to the compacted segments described by VOLDIR/remap (see remap())
 */

static int ctl_fd = -1;

static void ctl_reply_stats(int fd) {
    long long dbytes = 0, hbytes = 0;
    pthread_mutex_lock(&mu);
    uint64_t s = seq, d = durable, t = last_t, ck = ck_last_seq, sg = cur;
    int f = failed;
    for (uint32_t i = 0; cfg.journal && i < lay.n; i++) { /* every segment's logs */
        struct stat ds = {0}, hs = {0};
        char name[PATH_MAX];
        snprintf(name, sizeof name, "%s/journal.%05u", cfg.dir, lay.num[i]);
        fstat(seg_dfd[lay.num[i]], &ds);
        stat(name, &hs);
        dbytes += (long long)ds.st_blocks * 512, hbytes += (long long)hs.st_blocks * 512;
    }
    pthread_mutex_unlock(&mu);
    pthread_mutex_lock(&fmu);
    int par = atomic_load(&pv_on);
    double fill = par ? (double)pv.nhave / (double)(cfg.size / BLK) : 1.0;
    pthread_mutex_unlock(&fmu);
    dprintf(fd,
            "{\"name\": \"%s\", \"mode\": \"%s\", \"durability\": \"%s\", \"size\": %" PRIu64
            ", \"seq\": %" PRIu64 ", \"durable_seq\": %" PRIu64 ", \"last_t_ns\": %" PRIu64
            ", \"checkpoint_seq\": %" PRIu64 ", \"failed\": %s, \"writes\": %lu, \"reads\": %lu"
            ", \"bytes\": %lu, \"flushes\": %lu, \"zero\": %lu, \"syncs\": %lu"
            ", \"data_bytes\": %lld, \"header_bytes\": %lld, \"segment\": %" PRIu64
            ", \"parent\": %s, \"fill\": %.6f}\n",
            cfg.name, cfg.journal ? "journal" : "plain", cfg.strict ? "strict" : "flush", cfg.size, s, d,
            t, ck, f ? "true" : "false", n_writes, n_reads, n_bytes, n_flushes, n_zero, n_syncs,
            dbytes, hbytes, sg, par ? "true" : "false", fill);
}

static void *control(void *arg) {
    int64_t *copy = arg;
    for (;;) {
        int c = accept4(ctl_fd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            break; /* shut down at stop */
        }
        struct ucred cr;
        socklen_t len = sizeof cr;
        char line[64] = {0};
        struct timeval tv = {.tv_sec = 5};
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cr, &len) || (cr.uid != 0 && cr.uid != getuid())) {
            dprintf(c, "{\"error\": \"not allowed\"}\n");
        } else if (recv(c, line, sizeof line - 1, 0) <= 0) {
            /* nothing asked */
        } else if (!strncmp(line, "stats", 5)) {
            ctl_reply_stats(c);
        } else if (!strncmp(line, "checkpoint", 10) && cfg.journal && copy) {
            pthread_mutex_lock(&mu);
            checkpoint_locked(copy);
            uint64_t ck = ck_last_seq;
            pthread_mutex_unlock(&mu);
            dprintf(c, "{\"checkpoint_seq\": %" PRIu64 "}\n", ck);
        } else if (!strncmp(line, "rotate", 6) && cfg.journal) {
            int64_t n = rotate(UINT64_MAX);
            if (n < 0) dprintf(c, "{\"error\": \"rotate: %s\"}\n", strerror((int)-n));
            else dprintf(c, "{\"segment\": %" PRId64 "}\n", n);
        } else if (!strncmp(line, "remap", 5) && cfg.journal) {
            char err[256];
            int64_t n = remap(err, sizeof err);
            if (n < 0) {
                logmsg("remap refused: %s", err);
                dprintf(c, "{\"error\": \"remap: %s\"}\n", err);
            } else {
                dprintf(c, "{\"segment\": %" PRId64 "}\n", n);
            }
        } else {
            dprintf(c, "{\"error\": \"unknown command; stats, checkpoint, rotate or remap\"}\n");
        }
        close(c);
    }
    return NULL;
}

static int control_open(void) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    int n = snprintf(a.sun_path + 1, sizeof a.sun_path - 1, "yunhan-cdpd:%s", cfg.name);
    if (n < 0 || (size_t)n >= sizeof a.sun_path - 1) return -ENAMETOOLONG;
    ctl_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (ctl_fd < 0) return -errno;
    if (bind(ctl_fd, (struct sockaddr *)&a, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n)) ||
        listen(ctl_fd, 8)) {
        int e = errno;
        close(ctl_fd);
        ctl_fd = -1;
        return -e;
    }
    return 0;
}

/* ---- FUSE operations -------------------------------------------------------------------- */

static void fill_attr(fuse_ino_t ino, struct stat *st) {
    memset(st, 0, sizeof *st);
    st->st_ino = ino;
    st->st_uid = getuid();
    st->st_gid = getgid();
    if (ino == FUSE_ROOT_ID) {
        st->st_mode = S_IFDIR | 0755;
        st->st_nlink = 2;
    } else {
        st->st_mode = S_IFREG | 0600;
        st->st_nlink = 1;
        st->st_size = (off_t)cfg.size;
        st->st_blocks = (blkcnt_t)(cfg.size / 512);
    }
    st->st_blksize = BLK;
}

static void op_init(void *ud, struct fuse_conn_info *conn) {
    (void)ud;
    conn->max_write = MAX_DATA;
    conn->max_readahead = MAX_DATA;
    conn->want &= ~(unsigned)FUSE_CAP_WRITEBACK_CACHE; /* every write reaches us */
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
    if (parent != FUSE_ROOT_ID || strcmp(name, "vol")) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    struct fuse_entry_param e = {.ino = VOL_INO, .attr_timeout = ATTR_TIMEOUT, .entry_timeout = ATTR_TIMEOUT};
    fill_attr(VOL_INO, &e.attr);
    fuse_reply_entry(req, &e);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)fi;
    if (ino != FUSE_ROOT_ID && ino != VOL_INO) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    struct stat st;
    fill_attr(ino, &st);
    fuse_reply_attr(req, &st, ATTR_TIMEOUT);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    if (ino != VOL_INO) {
        fuse_reply_err(req, EISDIR);
        return;
    }
    fuse_reply_open(req, fi);
}

/* Read [b0, b0+nb) blocks into buf (aligned). */
static int read_blocks(char *buf, uint64_t b0, size_t nb) {
    if (!cfg.journal) return base_read(buf, b0, nb);
    int64_t *pos = malloc(nb * sizeof *pos);
    if (!pos) return -ENOMEM;
    pthread_rwlock_rdlock(&rot_lock); /* positions stay valid until read (remap) */
    pthread_mutex_lock(&mu);
    memcpy(pos, idx + b0, nb * sizeof *pos);
    pthread_mutex_unlock(&mu);
    int rc = 0;
    for (size_t i = 0; i < nb && !rc;) {
        size_t k = 1;
        if (pos[i] < 0)
            while (i + k < nb && pos[i + k] == pos[i]) k++;
        else
            while (i + k < nb && pos[i + k] == pos[i] + (int64_t)(k * BLK)) k++;
        char *dst = buf + i * BLK;
        if (pos[i] == IDX_ZERO) {
            memset(dst, 0, k * BLK);
        } else if (pos[i] == IDX_BASE) {
            rc = base_read(dst, b0 + i, k);
        } else {
            rc = pread_all(seg_dfd[SEG_NUM(pos[i])], dst, k * BLK, (off_t)SEG_OFF(pos[i]));
        }
        i += k;
    }
    pthread_rwlock_unlock(&rot_lock);
    free(pos);
    return rc;
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
    (void)ino, (void)fi;
    n_reads++;
    if (off < 0 || (uint64_t)off >= cfg.size || !size) {
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    if (size > cfg.size - (uint64_t)off) size = cfg.size - (uint64_t)off;
    uint64_t b0 = (uint64_t)off / BLK, b1 = ((uint64_t)off + size + BLK - 1) / BLK;
    char *buf = NULL;
    if (posix_memalign((void **)&buf, BLK, (b1 - b0) * BLK)) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    int rc = read_blocks(buf, b0, b1 - b0);
    if (rc) fuse_reply_err(req, -rc);
    else fuse_reply_buf(req, buf + (uint64_t)off % BLK, size);
    free(buf);
}

static int check_range(uint64_t off, uint64_t size) {
    if (off % BLK || size % BLK) return -EINVAL; /* a loop device with 4 KiB sectors never does this */
    if (off > cfg.size || size > cfg.size - off) return -ENOSPC;
    return 0;
}

/* The data log is allocated ahead of its writes, up to PREALLOC at a time (fallocate: unwritten
 * extents inside the file's size). An O_DIRECT write that extends a file takes the inode's
 * lock exclusively, so writes appended one after another would run one at a time; inside the
 * size they run side by side. Unwritten blocks read as zeros, so recovery, which checks each
 * record's data crc, is unchanged; a restart appends after the allocated tail. */
#define PREALLOC (64ull << 20)
#define PREALLOC_MIN (4ull << 20)
static pthread_mutex_t pa_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t pa_seg = UINT64_MAX, pa_end; /* under pa_mu: the segment, its allocated end */

static void prealloc_data(uint64_t seg, int fd, uint64_t need) {
    pthread_mutex_lock(&pa_mu);
    if (pa_seg != seg) {
        struct stat st;
        pa_seg = seg, pa_end = fstat(fd, &st) ? 0 : (uint64_t)st.st_size;
    }
    /* Ahead by as much as the log holds already, from 4 MiB up to PREALLOC: a quiet volume
     * does not hold 64 MiB it may never use, a busy one soon gets the full step. */
    uint64_t step = pa_end < PREALLOC_MIN ? PREALLOC_MIN : pa_end > PREALLOC ? PREALLOC : pa_end;
    if (need + step / 2 > pa_end) {
        uint64_t to = (need + step + step - 1) / step * step;
        if (!fallocate(fd, 0, (off_t)pa_end, (off_t)(to - pa_end))) pa_end = to;
        else pa_end = need; /* no room, or no fallocate: writes extend the file themselves */
    }
    pthread_mutex_unlock(&pa_mu);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi) {
    (void)ino, (void)fi;
    n_writes++;
    int rc = off < 0 ? -EINVAL : check_range((uint64_t)off, size);
    if (!rc && size > MAX_DATA) rc = -EINVAL;
    void *a = NULL;
    if (!rc && posix_memalign(&a, BLK, size ? size : BLK)) rc = -ENOMEM;
    if (rc) {
        fuse_reply_err(req, -rc);
        return;
    }
    memcpy(a, buf, size); /* O_DIRECT needs an aligned buffer; FUSE's is not */
    if (!cfg.journal) {
        plain_write_begin((uint64_t)off, size);
        rc = pwrite_all(bfd, a, size, off);
        plain_write_end((uint64_t)off, size, !rc);
        free(a);
        if (rc) fuse_reply_err(req, -rc);
        else {
            n_bytes += size;
            fuse_reply_write(req, size);
        }
        return;
    }
    struct hdr h = {.off = (uint64_t)off, .lenf = (uint32_t)size, .dcrc = crc32c(a, size)};
    pthread_rwlock_rdlock(&rot_lock); /* the segment stays the same until the header is in */
    uint64_t dp = atomic_fetch_add(&dend, size);
    h.dpos = cur << SEG_SHIFT | dp;
    if (SEG_NUM(dp)) rc = -ENOSPC;
    else {
        prealloc_data(cur, dfd, dp + size);
        rc = pwrite_all(dfd, a, size, (off_t)dp); /* O_DIRECT: in the device when it returns */
    }
    free(a);
    if (rc) {
        pthread_rwlock_unlock(&rot_lock);
        /* the data never got a header: nothing to undo, the write is refused */
        logmsg("write to the data log failed: %s", strerror(-rc));
        fuse_reply_err(req, -rc);
        return;
    }
    pthread_mutex_lock(&mu);
    rc = append_locked(&h);
    pthread_rwlock_unlock(&rot_lock);
    if (!rc && cfg.strict) rc = wait_durable_locked(h.seq);
    pthread_mutex_unlock(&mu);
    if (rc) fuse_reply_err(req, -rc);
    else {
        n_bytes += size;
        fuse_reply_write(req, size);
    }
    if (!rc && cfg.seg_bytes && dp + size >= cfg.seg_bytes && dp < cfg.seg_bytes) rotate(SEG_NUM(h.dpos));
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi) {
    (void)ino, (void)datasync, (void)fi;
    n_flushes++;
    int rc = 0;
    if (!cfg.journal) {
        rc = fdatasync(bfd) ? -errno : 0;
        if (!rc && atomic_load(&pv_on) && fdatasync(pv.mfd)) rc = -errno; /* plain writes it marks */
        n_syncs++;
    } else {
        struct hdr h = {.lenf = FLAG_FLUSH};
        pthread_mutex_lock(&mu);
        rc = append_locked(&h);
        if (!rc) rc = wait_durable_locked(h.seq);
        pthread_mutex_unlock(&mu);
    }
    fuse_reply_err(req, -rc);
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)ino, (void)fi;
    fuse_reply_err(req, 0); /* close(2); durability is FSYNC's job */
}

/* BLKDISCARD / write-zeroes through loop: PUNCH_HOLE or ZERO_RANGE, always KEEP_SIZE. */
static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t length,
                         struct fuse_file_info *fi) {
    (void)ino, (void)fi;
    const int zeroing = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE;
    if (!(mode & zeroing) || (mode & ~(zeroing | FALLOC_FL_KEEP_SIZE))) {
        fuse_reply_err(req, EOPNOTSUPP); /* the volume has a fixed size; allocation is ours */
        return;
    }
    int rc = off < 0 || length < 0 ? -EINVAL : check_range((uint64_t)off, (uint64_t)length);
    if (rc) {
        fuse_reply_err(req, -rc);
        return;
    }
    n_zero++;
    if (!cfg.journal) {
        plain_write_begin((uint64_t)off, (uint64_t)length);
        rc = fallocate(bfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, length) ? -errno : 0;
        plain_write_end((uint64_t)off, (uint64_t)length, !rc);
        fuse_reply_err(req, -rc);
        return;
    }
    pthread_mutex_lock(&mu);
    uint64_t o = (uint64_t)off, left = (uint64_t)length, last = 0;
    while (left && !rc) {
        uint32_t n = left > MAX_ZERO ? MAX_ZERO : (uint32_t)left;
        struct hdr h = {.off = o, .lenf = n | FLAG_ZERO};
        rc = append_locked(&h);
        last = h.seq, o += n, left -= n;
    }
    if (!rc && cfg.strict) rc = wait_durable_locked(last);
    pthread_mutex_unlock(&mu);
    fuse_reply_err(req, -rc);
}

static const struct fuse_lowlevel_ops ops = {
    .init = op_init,
    .lookup = op_lookup,
    .getattr = op_getattr,
    .open = op_open,
    .read = op_read,
    .write = op_write,
    .fsync = op_fsync,
    .flush = op_flush,
    .fallocate = op_fallocate,
};

/* ---- start and stop --------------------------------------------------------------------- */

static int open_in(const char *name, int flags) {
    char path[PATH_MAX];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", cfg.dir, name) >= sizeof path) {
        logmsg("%s/%s: path too long", cfg.dir, name);
        return -1;
    }
    int fd = open(path, flags | O_CLOEXEC, 0600);
    if (fd < 0) logmsg("cannot open %s: %s", path, strerror(errno));
    return fd;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: yunhan-cdpd --dir VOLDIR --mount MNT --size BYTES [--mode journal|plain]\n"
            "                   [--durability strict|flush] [--name NAME] [--threads N]\n"
            "                   [--checkpoint-every RECORDS (20000; 0: only at a clean stop)]\n"
            "                   [--segment-bytes BYTES (256 MiB; 0: rotate only when asked)]\n"
            "                   [--fill-rate BYTES_PER_S (0: unlimited; with VOLDIR/parent)]\n");
}

static int parse_args(int argc, char **argv) {
    static const struct option opts[] = {
        {"dir", required_argument, 0, 'd'},     {"mount", required_argument, 0, 'm'},
        {"size", required_argument, 0, 's'},    {"mode", required_argument, 0, 'M'},
        {"durability", required_argument, 0, 'D'}, {"name", required_argument, 0, 'n'},
        {"threads", required_argument, 0, 't'}, {"help", no_argument, 0, 'h'},
        {"checkpoint-every", required_argument, 0, 'c'},
        {"segment-bytes", required_argument, 0, 'S'},
        {"fill-rate", required_argument, 0, 'F'},
        {0, 0, 0, 0},
    };
    int c;
    char *end;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'd': cfg.dir = optarg; break;
        case 'm': cfg.mnt = optarg; break;
        case 'n': cfg.name = optarg; break;
        case 's':
            errno = 0;
            cfg.size = strtoull(optarg, &end, 10);
            if (errno || *end || !cfg.size || cfg.size % BLK) {
                fprintf(stderr, "yunhan-cdpd: --size %s: a positive multiple of 4096 bytes\n", optarg);
                return 2;
            }
            break;
        case 'M':
            if (!strcmp(optarg, "journal")) cfg.journal = 1;
            else if (!strcmp(optarg, "plain")) cfg.journal = 0;
            else { fprintf(stderr, "yunhan-cdpd: --mode %s: journal or plain\n", optarg); return 2; }
            break;
        case 'D':
            if (!strcmp(optarg, "strict")) cfg.strict = 1;
            else if (!strcmp(optarg, "flush")) cfg.strict = 0;
            else { fprintf(stderr, "yunhan-cdpd: --durability %s: strict or flush\n", optarg); return 2; }
            break;
        case 't':
            cfg.threads = atoi(optarg);
            if (cfg.threads < 1 || cfg.threads > 256) {
                fprintf(stderr, "yunhan-cdpd: --threads %s: 1 to 256\n", optarg);
                return 2;
            }
            break;
        case 'c':
            errno = 0;
            cfg.ck_every = strtoull(optarg, &end, 10);
            if (errno || *end || !*optarg) {
                fprintf(stderr, "yunhan-cdpd: --checkpoint-every %s: a number of records\n", optarg);
                return 2;
            }
            break;
        case 'S':
            errno = 0;
            cfg.seg_bytes = strtoull(optarg, &end, 10);
            if (errno || *end || !*optarg) {
                fprintf(stderr, "yunhan-cdpd: --segment-bytes %s: a number of bytes (0: never)\n", optarg);
                return 2;
            }
            break;
        case 'F':
            errno = 0;
            pv.rate = strtoull(optarg, &end, 10);
            if (errno || *end || !*optarg) {
                fprintf(stderr, "yunhan-cdpd: --fill-rate %s: bytes per second\n", optarg);
                return 2;
            }
            break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc || !cfg.dir || !cfg.mnt || !cfg.size) {
        usage(stderr);
        return 2;
    }
    return 0;
}

/* Read `segments` and open every listed data log (the last one created if missing). */
static int open_segments(void) {
    for (size_t i = 0; i < sizeof seg_dfd / sizeof *seg_dfd; i++) seg_dfd[i] = -1;
    if (layout_read()) return -1;
    for (uint32_t i = 0; i < lay.n; i++) {
        int fd = seg_open("data", lay.num[i], O_RDWR | O_DIRECT | (i == lay.n - 1 ? O_CREAT : 0));
        struct stat st;
        if (fd < 0 || fstat(fd, &st)) return -1;
        seg_dfd[lay.num[i]] = fd;
        seg_dsize[lay.num[i]] = (uint64_t)st.st_size;
    }
    return 0;
}

static void close_all(void) {
    if (bfd >= 0) close(bfd);
    for (size_t i = 0; i < sizeof seg_dfd / sizeof *seg_dfd; i++)
        if (seg_dfd[i] >= 0) close(seg_dfd[i]), seg_dfd[i] = -1;
    if (hfd >= 0) close(hfd);
    bfd = dfd = hfd = -1;
    free(idx);
    idx = NULL;
    parent_close();
}

int main(int argc, char **argv) {
    int rc = parse_args(argc, argv);
    if (rc) return rc;
    pthread_rwlockattr_t ra; /* a rotation must not wait behind a steady stream of writes */
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&rot_lock, &ra);
    crc32c_init();
    /* the fill writes base.img, also in journal mode, while a parent file is there */
    bfd = open_in("base.img", (cfg.journal && !parent_present() ? O_RDONLY : O_RDWR) | O_DIRECT);
    if (bfd < 0) goto fail;
    /* One server per volume: a second one (a stale process, a double start) would interleave
     * its records with ours. The lock goes with the process, also on SIGKILL. */
    if (flock(bfd, LOCK_EX | LOCK_NB)) {
        logmsg("%s/base.img is locked: %s", cfg.dir,
               errno == EWOULDBLOCK ? "another yunhan-cdpd serves this volume" : strerror(errno));
        goto fail;
    }
    if (cfg.journal) {
        if (open_segments()) goto fail;
        idx = malloc(cfg.size / BLK * sizeof *idx);
        if (!idx) {
            logmsg("no memory for the index of %" PRIu64 " blocks", cfg.size / BLK);
            goto fail;
        }
        for (uint64_t i = 0; i < cfg.size / BLK; i++) idx[i] = IDX_BASE;
        rc = recover();
        if (rc) {
            logmsg("journal recovery failed: %s", strerror(-rc));
            goto fail;
        }
    }
    if (parent_open()) goto fail;

    char fsname[256];
    snprintf(fsname, sizeof fsname, "-ofsname=yunhan-cdpd:%s,subtype=yunhan-cdpd", cfg.name);
    char *fargv[] = {argv[0], fsname, NULL};
    struct fuse_args args = FUSE_ARGS_INIT(2, fargv);
    struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, NULL);
    fuse_opt_free_args(&args);
    if (!se) {
        logmsg("cannot create the FUSE session");
        goto fail;
    }
    if (fuse_set_signal_handlers(se)) {
        logmsg("cannot install signal handlers");
        fuse_session_destroy(se);
        goto fail;
    }
    if (fuse_session_mount(se, cfg.mnt)) {
        logmsg("cannot mount on %s (is it an existing directory, and not a dead mount?)", cfg.mnt);
        fuse_remove_signal_handlers(se);
        fuse_session_destroy(se);
        goto fail;
    }
    logmsg("serving %s/vol: %" PRIu64 " bytes, mode %s%s", cfg.mnt, cfg.size,
           cfg.journal ? "journal" : "plain", cfg.journal ? (cfg.strict ? ", strict" : ", flush") : "");
    int64_t *ck_copy = NULL;
    pthread_t ck_thread;
    int ck_running = 0;
    if (cfg.journal) {
        ck_copy = malloc(cfg.size / BLK * sizeof *ck_copy);
        if (ck_copy && !pthread_create(&ck_thread, NULL, checkpointer, ck_copy)) ck_running = 1;
        else logmsg("no checkpoint thread (no memory?): restarts will replay the whole journal");
    }
    /* The control socket gets a buffer of its own: a checkpoint it writes may overlap one
     * of the checkpoint thread (both copy under mu, then write unlocked). */
    int64_t *ctl_copy = cfg.journal ? malloc(cfg.size / BLK * sizeof *ctl_copy) : NULL;
    pthread_t ctl_thread;
    int ctl_running = 0;
    pthread_t fill_thread;
    int fill_running = atomic_load(&pv_on) && !pthread_create(&fill_thread, NULL, filler, NULL);
    if (atomic_load(&pv_on) && !fill_running) logmsg("no fill thread: reads keep coming from the parent");
    rc = control_open();
    if (rc) logmsg("no control socket @yunhan-cdpd:%s: %s", cfg.name, strerror(-rc));
    else if (!pthread_create(&ctl_thread, NULL, control, ctl_copy)) ctl_running = 1;
    rc = 0;
    struct fuse_loop_config *lc = fuse_loop_cfg_create();
    if (!lc) {
        logmsg("no memory for the loop configuration");
        rc = -1;
    } else {
        fuse_loop_cfg_set_max_threads(lc, (unsigned)cfg.threads);
        fuse_loop_cfg_set_idle_threads(lc, (unsigned)cfg.threads);
        rc = fuse_session_loop_mt(se, lc);
        fuse_loop_cfg_destroy(lc);
    }
    if (ctl_running) {
        shutdown(ctl_fd, SHUT_RDWR); /* accept() returns EINVAL */
        pthread_join(ctl_thread, NULL);
    }
    if (ctl_fd >= 0) close(ctl_fd);
    free(ctl_copy);
    if (fill_running) { /* it saves fill.map on its way out */
        pthread_mutex_lock(&fmu);
        pv.stop = 1;
        pthread_cond_signal(&fill_cv);
        pthread_mutex_unlock(&fmu);
        pthread_join(fill_thread, NULL);
    }
    if (ck_running) {
        pthread_mutex_lock(&mu);
        ck_stop = 1;
        pthread_cond_signal(&ck_cv);
        pthread_mutex_unlock(&mu);
        pthread_join(ck_thread, NULL);
    }
    int sync_rc = cfg.journal ? journal_sync() : (fdatasync(bfd) ? -errno : 0);
    if (sync_rc) logmsg("final sync failed: %s", strerror(-sync_rc));
    if (cfg.journal && !sync_rc && ck_copy) { /* a restart after a clean stop replays nothing */
        pthread_mutex_lock(&mu);
        checkpoint_locked(ck_copy);
        pthread_mutex_unlock(&mu);
    }
    free(ck_copy);
    fuse_session_unmount(se);
    fuse_remove_signal_handlers(se);
    fuse_session_destroy(se);
    logmsg("stopped: writes=%lu reads=%lu bytes=%lu flushes=%lu zero=%lu syncs=%lu seq=%" PRIu64,
           n_writes, n_reads, n_bytes, n_flushes, n_zero, n_syncs, seq);
    close_all();
    return rc < 0 || sync_rc ? 1 : 0;
fail:
    close_all();
    return 1;
}
