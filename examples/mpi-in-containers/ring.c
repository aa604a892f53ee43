/* A small MPI program for the containerized workload: a token goes round the ring (each rank
 * adds its number), then an allreduce sums rank+1 over all ranks. Each rank says where it runs;
 * rank 0 checks both results and exits non-zero if either is wrong. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int rank, size;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    char host[256] = "?";
    gethostname(host, sizeof host);
    const char *node = getenv("NODE");
    printf("rank %d of %d in container %s on node %s\n", rank, size, host, node ? node : "?");
    fflush(stdout);

    int token = 0;
    if (size > 1) {
        if (rank == 0) {
            MPI_Send(&token, 1, MPI_INT, 1, 0, MPI_COMM_WORLD);
            MPI_Recv(&token, 1, MPI_INT, size - 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else {
            MPI_Recv(&token, 1, MPI_INT, rank - 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            token += rank;
            MPI_Send(&token, 1, MPI_INT, (rank + 1) % size, 0, MPI_COMM_WORLD);
        }
    }
    int mine = rank + 1, sum = 0;
    MPI_Allreduce(&mine, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);

    int ok = 1;
    if (rank == 0) {
        int ring_expected = size * (size - 1) / 2, sum_expected = size * (size + 1) / 2;
        ok = token == ring_expected && sum == sum_expected;
        printf("ring token %d (expected %d), allreduce %d (expected %d): %s\n", token, ring_expected,
               sum, sum_expected, ok ? "RESULT OK" : "RESULT WRONG");
        fflush(stdout);
    }
    MPI_Finalize();
    return ok ? 0 : 1;
}
