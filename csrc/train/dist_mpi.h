// dist_mpi: the MPI communicator (MPI_COMM_WORLD), built when make finds mpicc (GIVT_WITH_MPI).
#ifndef GIVT_DIST_MPI_H
#define GIVT_DIST_MPI_H

#include "comm.h"

// MPI_Init, MPI_COMM_WORLD; launcher names the launcher found in the environment.
Dist *dist_open_mpi(const char *launcher);
const char *dist_mpi_version(void);

#endif
