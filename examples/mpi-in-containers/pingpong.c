/* Point-to-point MPI benchmark between ranks 0 and 1 (OSU-style, written for mpiswarm): for each
 * message size from 1 B to 4 MiB (powers of two), the one-way latency of a blocking ping-pong and
 * the bandwidth of a window of non-blocking sends acknowledged by the receiver. Other ranks only
 * take part in the final barrier.
 *
 *   pingpong [MAX_BYTES [BUDGET_MIB [MIN_BYTES]]]   defaults: 4194304, 64 (MiB moved per size and
 *                                                   test, within 10..1000 round trips), 1
 *
 * Output (rank 0), one line per size, machine-readable:
 *   # pingpong rank0=HOST rank1=HOST ...
 *   PINGPONG size=8 lat_us=52.10 bw_mbit=1.23 iters=1000 bw_iters=200
 * latency: half the mean round trip; bandwidth: payload bits over wall time of the windows, in
 * 10^6 bit/s. Exits non-zero if a received message differs from what was sent. */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WINDOW 16
#define MAX_ITERS 1000
#define MIN_ITERS 10
#define WARMUP 5

static MPI_Comm pair; /* ranks 0 and 1 */

static long clamp(long v, long lo, long hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Half the mean round trip of `iters` ping-pongs of `size` bytes, in microseconds. */
static double latency(int rank, char *buf, long size, long iters) {
    double t0 = 0;
    for (long i = 0; i < iters + WARMUP; i++) {
        if (i == WARMUP) {
            MPI_Barrier(pair);
            t0 = MPI_Wtime();
        }
        if (rank == 0) {
            MPI_Send(buf, (int)size, MPI_CHAR, 1, 1, MPI_COMM_WORLD);
            MPI_Recv(buf, (int)size, MPI_CHAR, 1, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else {
            MPI_Recv(buf, (int)size, MPI_CHAR, 0, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            MPI_Send(buf, (int)size, MPI_CHAR, 0, 1, MPI_COMM_WORLD);
        }
    }
    return (MPI_Wtime() - t0) * 1e6 / (2.0 * (double)iters);
}

/* Bandwidth of `iters` windows of WINDOW messages from rank 0 to rank 1, each window
 * acknowledged, in 10^6 bit/s. */
static double bandwidth(int rank, char *bufs, long size, long iters) {
    MPI_Request req[WINDOW];
    char ack = 0;
    double t0 = 0;
    for (long i = 0; i < iters + WARMUP; i++) {
        if (i == WARMUP) {
            MPI_Barrier(pair);
            t0 = MPI_Wtime();
        }
        for (int w = 0; w < WINDOW; w++) {
            char *b = bufs + (size_t)w * (size_t)size;
            if (rank == 0)
                MPI_Isend(b, (int)size, MPI_CHAR, 1, 2, MPI_COMM_WORLD, &req[w]);
            else
                MPI_Irecv(b, (int)size, MPI_CHAR, 0, 2, MPI_COMM_WORLD, &req[w]);
        }
        MPI_Waitall(WINDOW, req, MPI_STATUSES_IGNORE);
        if (rank == 0)
            MPI_Recv(&ack, 1, MPI_CHAR, 1, 3, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        else
            MPI_Send(&ack, 1, MPI_CHAR, 0, 3, MPI_COMM_WORLD);
    }
    double secs = MPI_Wtime() - t0;
    return (double)size * WINDOW * (double)iters * 8.0 / secs / 1e6;
}

/* Fills with a pattern that depends on the size, so that a message of the wrong size or a
 * stale buffer shows. */
static void fill(char *buf, long size) {
    for (long i = 0; i < size; i++) buf[i] = (char)((i * 31 + size) & 0xff);
}

static int check(const char *buf, long size) {
    for (long i = 0; i < size; i++)
        if (buf[i] != (char)((i * 31 + size) & 0xff)) return 0;
    return 1;
}

int main(int argc, char **argv) {
    int rank, nranks;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    long max = argc > 1 ? atol(argv[1]) : 4L << 20;
    long budget = (argc > 2 ? atol(argv[2]) : 64) << 20;
    long min = argc > 3 ? atol(argv[3]) : 1;
    if (nranks < 2 || max < 1 || budget < 1 || min < 1 || min > max) {
        if (rank == 0)
            fprintf(stderr, "pingpong: needs 2 ranks, 1 <= MIN_BYTES <= MAX_BYTES, BUDGET_MIB >= 1\n");
        MPI_Finalize();
        return 2;
    }
    MPI_Comm_split(MPI_COMM_WORLD, rank < 2 ? 0 : MPI_UNDEFINED, rank, &pair);
    char host[256] = "?", peer[256] = "?";
    gethostname(host, sizeof host);
    if (rank == 1) MPI_Send(host, sizeof host, MPI_CHAR, 0, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        MPI_Recv(peer, sizeof peer, MPI_CHAR, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        const char *node = getenv("NODE");
        printf("# pingpong rank0=%s rank1=%s node0=%s ranks=%d window=%d budget_mib=%ld\n", host,
               peer, node ? node : "?", nranks, WINDOW, budget >> 20);
        fflush(stdout);
    }
    char *bufs = malloc((size_t)max * WINDOW);
    if (!bufs) {
        fprintf(stderr, "pingpong: rank %d cannot allocate %ld bytes\n", rank, max * WINDOW);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    int ok = 1;
    if (rank < 2) {
        for (long size = min; size <= max; size *= 2) {
            long iters = clamp(budget / size, MIN_ITERS, MAX_ITERS);
            long bw_iters = clamp(budget / (size * WINDOW), MIN_ITERS, MAX_ITERS / 5);
            fill(bufs, size);
            double lat = latency(rank, bufs, size, iters);
            ok = ok && check(bufs, size);
            double bw = bandwidth(rank, bufs, size, bw_iters);
            if (rank == 0) {
                printf("PINGPONG size=%ld lat_us=%.2f bw_mbit=%.1f iters=%ld bw_iters=%ld\n", size,
                       lat, bw, iters, bw_iters);
                fflush(stdout);
            }
        }
    }
    int all_ok = 0;
    MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (rank == 0) printf("# pingpong %s\n", all_ok ? "RESULT OK" : "RESULT WRONG");
    free(bufs);
    if (pair != MPI_COMM_NULL) MPI_Comm_free(&pair);
    MPI_Finalize();
    return all_ok ? 0 : 1;
}
