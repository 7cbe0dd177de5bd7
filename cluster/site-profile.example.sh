# Site profile for jobs/train.sbatch on a real cluster (copy, edit, and point HYPERRNN_SITE_PROFILE
# at your copy: `HYPERRNN_SITE_PROFILE=~/hyperrnn-site.sh sbatch jobs/train.sbatch CONFIG`). The
# job script sources it first, inside the job, on the first node. Everything here is optional.
# Leaves out: building hyperrnn (build it once on a login node with the same modules loaded).

# Modules: the MPI, HDF5 and BLAS the binary was built against.
# module load openmpi/4.1 hdf5/1.10-parallel openblas/0.3

# The binary (instead of `hyperrnn` on PATH).
# export HYPERRNN_BIN=$HOME/src/hyperrnn/build/bin/hyperrnn

# Launcher: srun (with Slurm's pmix plugin) or mpirun; unset = srun when `srun --mpi=list` has pmix.
# export HYPERRNN_LAUNCHER=srun

# Threads per rank when the job gives no --cpus-per-task and the options no --threads (default:
# the cores of each rank's affinity mask).
# export HYPERRNN_THREADS=8

# BLAS kernel. hyperrnn's results do not depend on ranks, threads or binding, but OpenBLAS picks
# its kernel from the CPU, and two kernels may round differently: a run resumed on another node
# type then continues on different bits. Pin the kernel of the oldest node type in the partition
# so that every leg of a requeued job computes alike (`hyperrnn bench` prints the kernel in use).
# It costs speed on the newer nodes: on a Zen 5 core Haswell's AVX2 kernel instead of OpenBLAS's
# own AVX-512 one made a moe step 1.35x slower (docs/performance.md). Pin only where legs move.
# export OPENBLAS_CORETYPE=Haswell

# Scratch: run directories (snapshots are the large files) on the parallel file system.
# export HYPERRNN_RUNS=${SCRATCH:-/scratch/$USER}/hyperrnn-runs

# How often a job may requeue itself after a preemption or its time limit (default 20).
# export HYPERRNN_MAX_REQUEUES=50
