/*
 * kiln.executors._spawn: start one attempt's process already inside its cgroups, in one step.
 *
 * Why C: the portable way (posix_spawn of `/bin/sh -c 'cd ...; echo $$ > procs; exec "$@"'`) costs
 * every job a second exec, which measured about half a millisecond of CPU per job - as much as the
 * job `true` itself, and the biggest single cost of a 10,000-child array. Here the child of a
 * vfork joins the cgroups, enters its workdir, opens its log and execs the job directly, so the job
 * pays for its own exec only. Every step in the child is a plain system call (nothing that
 * allocates or locks), as vfork requires; a failing step is reported to the parent, which raises
 * OSError naming the step. Python code never runs in the child.
 *
 * The job starts like a process in a fresh container: its own session, every signal at its
 * default disposition and none blocked (Python ignores SIGPIPE, and the supervisor SIGINT/SIGHUP;
 * neither may leak into jobs), stdin from /dev/null, stdout and stderr appended to its log.
 *
 * With a mount namespace given (job_mounts.py: private directories such as /root shown to jobs),
 * it enters it after opening its log (whose path lies in the data dir, which the namespace may not
 * show) and before entering its workdir (setns moves the process to the namespace's root).
 *
 * Then, last before exec, it becomes the job's user (when one is given): groups, gid, uid. Joining
 * the cgroups and opening the log need the supervisor's rights, which the job must not keep: it
 * writes its log through the descriptor only. The raw system calls change this process alone;
 * glibc's setuid() would signal every thread of the process, and in a vfork child those are the
 * parent's threads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define LOG_MODE 0600

enum step { STEP_NONE, STEP_CGROUP, STEP_CWD, STEP_STDIN, STEP_LOG, STEP_NAMESPACE, STEP_USER, STEP_EXEC };

/* Written by the vfork child (same memory), read by the parent once the child exec'd or died. */
struct failure {
    volatile int step;
    volatile int error;
    volatile int index; /* which cgroup procs file */
};

/* A NULL-terminated array of pointers into the bytes objects of `seq` (kept alive by the caller). */
static char **as_strings(PyObject *seq, const char *what) {
    PyObject *fast = PySequence_Fast(seq, what);
    if (fast == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    char **out = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    if (out == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        if (!PyBytes_Check(item) || strlen(PyBytes_AS_STRING(item)) != (size_t)PyBytes_GET_SIZE(item)) {
            PyErr_Format(PyBytes_Check(item) ? PyExc_ValueError : PyExc_TypeError,
                         "%s must hold bytes without NUL", what);
            PyMem_Free(out);
            Py_DECREF(fast);
            return NULL;
        }
        out[i] = PyBytes_AS_STRING(item);
    }
    Py_DECREF(fast); /* the items stay referenced by `seq` itself, which the caller holds */
    return out;
}

/* The supplementary groups as gid_t numbers (NULL with no error set: none given). */
static gid_t *groups_from(PyObject *seq, size_t *count) {
    *count = 0;
    if (seq == NULL || seq == Py_None) return NULL;
    PyObject *fast = PySequence_Fast(seq, "groups must be a sequence of ints");
    if (fast == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    gid_t *out = PyMem_Calloc((size_t)n + 1, sizeof(gid_t));
    if (out == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long value = PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
        if ((value == -1 && PyErr_Occurred()) || value < 0 || value > (long)(gid_t)-2) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "groups must be valid gids");
            PyMem_Free(out);
            Py_DECREF(fast);
            return NULL;
        }
        out[i] = (gid_t)value;
    }
    Py_DECREF(fast);
    *count = (size_t)n;
    return out;
}

static int move_to(int fd, int target) {
    if (fd == target) return fcntl(fd, F_SETFD, 0); /* keep it across exec */
    if (dup2(fd, target) < 0) return -1;
    close(fd);
    return 0;
}

/* Who the job runs as; `switch_user` 0: stay the supervisor's user. */
struct identity {
    int switch_user;
    uid_t uid;
    gid_t gid;
    size_t ngroups;
    const gid_t *groups;
};

#if defined(SYS_setresuid32)
#define KILN_SETGROUPS SYS_setgroups32
#define KILN_SETRESGID SYS_setresgid32
#define KILN_SETRESUID SYS_setresuid32
#else
#define KILN_SETGROUPS SYS_setgroups
#define KILN_SETRESGID SYS_setresgid
#define KILN_SETRESUID SYS_setresuid
#endif

static int become(const struct identity *who) {
    if (!who->switch_user) return 0;
    if (syscall(KILN_SETGROUPS, who->ngroups, who->groups) < 0) return -1;
    if (syscall(KILN_SETRESGID, who->gid, who->gid, who->gid) < 0) return -1;
    return (int)syscall(KILN_SETRESUID, who->uid, who->uid, who->uid);
}

/* The child: only system calls from here on; never returns. */
static void child(const char *path, char *const argv[], char *const envp[], const char *cwd, const char *log,
                  char *const procs[], const struct identity *who, int mount_ns, int job_umask, struct failure *failed) {
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++) sigaction(sig, &dfl, NULL); /* EINVAL for SIGKILL etc. is fine */

    if (setsid() < 0) {
        /* only fails for a group leader, which a fresh child never is */
    }
    for (int i = 0; procs[i] != NULL; i++) {
        int fd = open(procs[i], O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, "0", 1) != 1) {
            failed->error = errno;
            failed->index = i;
            failed->step = STEP_CGROUP;
            _exit(127);
        }
        close(fd);
    }
    int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (in < 0 || move_to(in, 0) < 0) {
        failed->error = errno;
        failed->step = STEP_STDIN;
        _exit(127);
    }
    int out = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, LOG_MODE);
    if (out < 0 || (out != 1 && dup2(out, 1) < 0) || move_to(out, 2) < 0 || fcntl(1, F_SETFD, 0) < 0) {
        failed->error = errno;
        failed->step = STEP_LOG;
        _exit(127);
    }
    if (mount_ns >= 0 && syscall(SYS_setns, mount_ns, CLONE_NEWNS) < 0) {
        failed->error = errno;
        failed->step = STEP_NAMESPACE;
        _exit(127);
    }
    if (job_umask >= 0) umask((mode_t)job_umask); /* this child's own: vfork shares memory, not the fs context */
    if (chdir(cwd) < 0) {
        failed->error = errno;
        failed->step = STEP_CWD;
        _exit(127);
    }
#ifdef SYS_close_range
    syscall(SYS_close_range, 3, ~0U, 0); /* descriptors the supervisor inherited without CLOEXEC */
#endif
    if (become(who) < 0) {
        failed->error = errno;
        failed->step = STEP_USER;
        _exit(127);
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execve(path, argv, envp);
    failed->error = errno;
    failed->step = STEP_EXEC;
    _exit(127);
}

static PyObject *raise_failure(const struct failure *failed, PyObject *procs_seq, const char *cwd, const char *log,
                               const char *path) {
    errno = failed->error;
    switch (failed->step) {
    case STEP_CGROUP: {
        PyObject *item = PySequence_GetItem(procs_seq, failed->index);
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, item ? PyBytes_AsString(item) : "cgroup.procs");
        Py_XDECREF(item);
        return NULL;
    }
    case STEP_CWD:
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, cwd);
    case STEP_STDIN:
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, "/dev/null");
    case STEP_LOG:
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, log);
    case STEP_NAMESPACE:
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, "setns (the jobs' mount namespace)");
    case STEP_USER:
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, "setuid");
    default:
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
    }
}

PyDoc_STRVAR(spawn_doc,
             "spawn(path, argv, envp, cwd, log, procs, uid=-1, gid=-1, groups=(), mount_ns=-1, umask=-1) -> pid\n\n"
             "Start `path` with `argv` and `envp` (lists of bytes) in its own session, inside every\n"
             "cgroup whose procs file is listed in `procs`, in directory `cwd`, stdin /dev/null,\n"
             "stdout and stderr appended to `log` (created 0600), as user `uid`, group `gid` and\n"
             "supplementary `groups` (uid -1: the caller's own), in the mount namespace of the\n"
             "descriptor `mount_ns` (-1: the caller's), with `umask` (-1: the caller's). Raises OSError (with the file\n"
             "at fault) when any step fails; nothing is left running then.");

static PyObject *spawn(PyObject *Py_UNUSED(module), PyObject *args) {
    const char *path, *cwd, *log;
    PyObject *argv_seq, *envp_seq, *procs_seq, *groups_seq = NULL;
    long uid = -1, gid = -1;
    int mount_ns = -1, job_umask = -1;
    if (!PyArg_ParseTuple(args, "yOOyyO|llOii:spawn", &path, &argv_seq, &envp_seq, &cwd, &log, &procs_seq, &uid, &gid,
                          &groups_seq, &mount_ns, &job_umask))
        return NULL;
    struct identity who = {uid >= 0, (uid_t)uid, (gid_t)gid, 0, NULL};
    if (who.switch_user && (gid < 0 || uid > (long)(uid_t)-2 || gid > (long)(gid_t)-2)) {
        PyErr_SetString(PyExc_ValueError, "uid and gid must be valid ids");
        return NULL;
    }
    gid_t *groups = groups_from(groups_seq, &who.ngroups);
    if (groups == NULL && PyErr_Occurred()) return NULL;
    who.groups = groups;
    char **argv = as_strings(argv_seq, "argv");
    char **envp = argv ? as_strings(envp_seq, "envp") : NULL;
    char **procs = envp ? as_strings(procs_seq, "procs") : NULL;
    if (procs == NULL) {
        PyMem_Free(argv);
        PyMem_Free(envp);
        PyMem_Free(groups);
        return NULL;
    }
    if (argv[0] == NULL) {
        PyMem_Free(argv);
        PyMem_Free(envp);
        PyMem_Free(procs);
        PyMem_Free(groups);
        PyErr_SetString(PyExc_ValueError, "argv must not be empty");
        return NULL;
    }
    struct failure failed = {STEP_NONE, 0, 0};
    sigset_t all, old;
    sigfillset(&all);
    pid_t pid;
    int spawn_errno = 0;
    Py_BEGIN_ALLOW_THREADS
    /* No signal handler may run in the child: it would run on the parent's memory. */
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid = vfork();
    if (pid == 0) child(path, argv, envp, cwd, log, procs, &who, mount_ns, job_umask, &failed);
    spawn_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    Py_END_ALLOW_THREADS
    PyObject *result = NULL;
    if (pid < 0) {
        errno = spawn_errno;
        PyErr_SetFromErrno(PyExc_OSError);
    } else if (failed.step != STEP_NONE) {
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        raise_failure(&failed, procs_seq, cwd, log, path);
    } else {
        result = PyLong_FromLong((long)pid);
    }
    PyMem_Free(argv);
    PyMem_Free(envp);
    PyMem_Free(procs);
    PyMem_Free(groups);
    return result;
}

static PyMethodDef methods[] = {
    {"spawn", spawn, METH_VARARGS, spawn_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "kiln.executors._spawn", "Start attempts inside their cgroups without a shell.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__spawn(void) { return PyModule_Create(&module); }
