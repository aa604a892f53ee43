/* A small MPI program for the containerized workload: a token goes round the ring (each rank
 * adds its number), then an allreduce sums rank+1 over all ranks. Each rank says where it runs
 * (container, node, and its addresses, MPI's traffic among them); rank 0 checks both results and
 * exits non-zero if either is wrong. */
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <mpi.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The container's IPv4 addresses other than loopback, comma-separated. */
static void addresses(char *out, size_t len) {
    struct ifaddrs *all, *a;
    out[0] = 0;
    if (getifaddrs(&all) != 0) return;
    for (a = all; a; a = a->ifa_next) {
        char ip[INET_ADDRSTRLEN];
        if (!a->ifa_addr || a->ifa_addr->sa_family != AF_INET) continue;
        inet_ntop(AF_INET, &((struct sockaddr_in *)a->ifa_addr)->sin_addr, ip, sizeof ip);
        if (strncmp(ip, "127.", 4) == 0 || strlen(out) + strlen(ip) + 2 > len) continue;
        if (out[0]) strcat(out, ",");
        strcat(out, ip);
    }
    freeifaddrs(all);
}

int main(int argc, char **argv) {
    int rank, size;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    char host[256] = "?";
    gethostname(host, sizeof host);
    const char *node = getenv("NODE");
    char addrs[512];
    addresses(addrs, sizeof addrs);
    printf("rank %d of %d at %s in container %s on node %s\n", rank, size, addrs, host,
           node ? node : "?");
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
