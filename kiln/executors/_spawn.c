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
#include <pthread.h>
#include <stdlib.h>
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

/* Sets the OSError of a failed step (naming the file at fault) and returns NULL. */
static PyObject *raise_failure(const struct failure *failed, char *const procs[], const char *cwd, const char *log,
                               const char *path) {
    errno = failed->error;
    switch (failed->step) {
    case STEP_CGROUP:
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, procs[failed->index]);
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

/* One job to start: everything the child reads, in memory of its own (no Python object), so that a
 * thread without the GIL can start it. */
struct job {
    char *path, *cwd, *log;
    char **argv, **envp, **procs;
    gid_t *groups;
    struct identity who;
    int mount_ns, umask;
};

/* Start `job` in a vfork child; the pid (> 0, `failed` says whether a step failed) or -1 (errno). */
static pid_t start_job(const struct job *job, struct failure *failed) {
    sigset_t all, old;
    sigfillset(&all);
    /* No signal handler may run in the child: it would run on the parent's memory. */
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t pid = vfork();
    if (pid == 0)
        child(job->path, job->argv, job->envp, job->cwd, job->log, job->procs, &job->who, job->mount_ns, job->umask,
              failed);
    int saved = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = saved;
    return pid;
}

/* A copy of bytes without NUL, malloc'd; NULL with an exception set. */
static char *copy_bytes(PyObject *item, const char *what) {
    if (!PyBytes_Check(item) || strlen(PyBytes_AS_STRING(item)) != (size_t)PyBytes_GET_SIZE(item)) {
        PyErr_Format(PyBytes_Check(item) ? PyExc_ValueError : PyExc_TypeError, "%s must be bytes without NUL", what);
        return NULL;
    }
    char *out = malloc((size_t)PyBytes_GET_SIZE(item) + 1);
    if (out == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(out, PyBytes_AS_STRING(item), (size_t)PyBytes_GET_SIZE(item) + 1);
    return out;
}

/* A NULL-terminated copy of a sequence of bytes, pointers and characters in one malloc'd block. */
static char **copy_strings(PyObject *seq, const char *what) {
    PyObject *fast = PySequence_Fast(seq, what);
    if (fast == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    size_t total = ((size_t)n + 1) * sizeof(char *);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        if (!PyBytes_Check(item) || strlen(PyBytes_AS_STRING(item)) != (size_t)PyBytes_GET_SIZE(item)) {
            PyErr_Format(PyBytes_Check(item) ? PyExc_ValueError : PyExc_TypeError,
                         "%s must hold bytes without NUL", what);
            Py_DECREF(fast);
            return NULL;
        }
        total += (size_t)PyBytes_GET_SIZE(item) + 1;
    }
    char **out = malloc(total);
    if (out == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    char *next = (char *)(out + n + 1);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        size_t size = (size_t)PyBytes_GET_SIZE(item) + 1;
        memcpy(next, PyBytes_AS_STRING(item), size);
        out[i] = next;
        next += size;
    }
    out[n] = NULL;
    Py_DECREF(fast);
    return out;
}

static void free_job(struct job *job) {
    free(job->path);
    free(job->cwd);
    free(job->log);
    free(job->argv);
    free(job->envp);
    free(job->procs);
    PyMem_Free(job->groups);
}

/* Fill `job` from spawn()/submit() arguments (after the first `skip` ones); 0, or -1 with an exception. */
static int job_from_args(struct job *job, PyObject *path, PyObject *argv, PyObject *envp, PyObject *cwd, PyObject *log,
                         PyObject *procs, long uid, long gid, PyObject *groups, int mount_ns, int job_umask) {
    memset(job, 0, sizeof *job);
    job->who.switch_user = uid >= 0;
    job->who.uid = (uid_t)uid;
    job->who.gid = (gid_t)gid;
    job->mount_ns = mount_ns;
    job->umask = job_umask;
    if (job->who.switch_user && (gid < 0 || uid > (long)(uid_t)-2 || gid > (long)(gid_t)-2)) {
        PyErr_SetString(PyExc_ValueError, "uid and gid must be valid ids");
        return -1;
    }
    job->groups = groups_from(groups, &job->who.ngroups);
    if (job->groups == NULL && PyErr_Occurred()) return -1;
    job->who.groups = job->groups;
    if ((job->path = copy_bytes(path, "path")) == NULL || (job->cwd = copy_bytes(cwd, "cwd")) == NULL ||
        (job->log = copy_bytes(log, "log")) == NULL || (job->argv = copy_strings(argv, "argv")) == NULL ||
        (job->envp = copy_strings(envp, "envp")) == NULL || (job->procs = copy_strings(procs, "procs")) == NULL) {
        free_job(job);
        return -1;
    }
    if (job->argv[0] == NULL) {
        free_job(job);
        PyErr_SetString(PyExc_ValueError, "argv must not be empty");
        return -1;
    }
    return 0;
}

#define JOB_FORMAT "OOOOOO|llOii"

PyDoc_STRVAR(spawn_doc,
             "spawn(path, argv, envp, cwd, log, procs, uid=-1, gid=-1, groups=(), mount_ns=-1, umask=-1) -> pid\n\n"
             "Start `path` with `argv` and `envp` (lists of bytes) in its own session, inside every\n"
             "cgroup whose procs file is listed in `procs`, in directory `cwd`, stdin /dev/null,\n"
             "stdout and stderr appended to `log` (created 0600), as user `uid`, group `gid` and\n"
             "supplementary `groups` (uid -1: the caller's own), in the mount namespace of the\n"
             "descriptor `mount_ns` (-1: the caller's), with `umask` (-1: the caller's). Raises OSError (with the file\n"
             "at fault) when any step fails; nothing is left running then. Returns once the job exec'd.");

static PyObject *spawn(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *path, *argv, *envp, *cwd, *log, *procs, *groups = NULL;
    long uid = -1, gid = -1;
    int mount_ns = -1, job_umask = -1;
    if (!PyArg_ParseTuple(args, JOB_FORMAT ":spawn", &path, &argv, &envp, &cwd, &log, &procs, &uid, &gid, &groups,
                          &mount_ns, &job_umask))
        return NULL;
    struct job job;
    if (job_from_args(&job, path, argv, envp, cwd, log, procs, uid, gid, groups, mount_ns, job_umask) < 0) return NULL;
    struct failure failed = {STEP_NONE, 0, 0};
    pid_t pid;
    Py_BEGIN_ALLOW_THREADS
    pid = start_job(&job, &failed);
    Py_END_ALLOW_THREADS
    PyObject *result = NULL;
    if (pid < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
    } else if (failed.step != STEP_NONE) {
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        raise_failure(&failed, job.procs, job.cwd, job.log, job.path);
    } else {
        result = PyLong_FromLong((long)pid);
    }
    free_job(&job);
    return result;
}

/* ---- Launcher: the same start, on a thread of its own ------------------------------------------
 *
 * A vfork parent waits until its child has exec'd. On a busy host the child waits for a CPU first,
 * and the supervisor's one thread spent more than half of its time in that wait during an array
 * of short jobs. A Launcher's thread does the vfork instead: it never takes the GIL (it touches no
 * Python object), so the caller goes on at once and collects the outcome later, when `fileno()`
 * is readable. Jobs start in the order submitted.
 */

struct launch {
    struct launch *next;
    PyObject *token; /* the caller's, returned with the outcome; touched only with the GIL */
    struct job job;
    pid_t pid;
    int pidfd;
    int error; /* errno of vfork itself */
    struct failure failed;
};

typedef struct {
    PyObject_HEAD pthread_mutex_t lock;
    pthread_cond_t wake;
    struct launch *head, *tail;
    int stopping, running;
    pthread_t thread;
    int done_read, done_write; /* the thread writes each finished launch's address here */
} Launcher;

static void run_launch(struct launch *launch) {
    launch->pid = start_job(&launch->job, &launch->failed);
    launch->error = launch->pid < 0 ? errno : 0;
    launch->pidfd = -1;
    if (launch->pid > 0 && launch->failed.step != STEP_NONE) {
        int status;
        while (waitpid(launch->pid, &status, 0) < 0 && errno == EINTR) {
        }
    } else if (launch->pid > 0) {
#ifdef SYS_pidfd_open
        launch->pidfd = (int)syscall(SYS_pidfd_open, launch->pid, 0); /* -1 before Linux 5.3: the caller opens none */
        if (launch->pidfd >= 0) fcntl(launch->pidfd, F_SETFD, FD_CLOEXEC);
#endif
    }
}

static void *launcher_thread(void *arg) {
    Launcher *self = arg;
    for (;;) {
        pthread_mutex_lock(&self->lock);
        while (self->head == NULL && !self->stopping) pthread_cond_wait(&self->wake, &self->lock);
        struct launch *launch = self->head;
        if (launch == NULL) { /* stopping, and everything submitted has started */
            pthread_mutex_unlock(&self->lock);
            return NULL;
        }
        self->head = launch->next;
        if (self->head == NULL) self->tail = NULL;
        pthread_mutex_unlock(&self->lock);
        run_launch(launch);
        /* Atomic (less than PIPE_BUF). It blocks only with a full pipe, 8,192 outcomes not collected:
         * far more than an executor ever starts at once. */
        ssize_t written;
        do {
            written = write(self->done_write, &launch, sizeof launch);
        } while (written < 0 && errno == EINTR);
    }
}

static PyObject *launcher_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwargs)) {
    Launcher *self = (Launcher *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->done_read = self->done_write = -1;
    pthread_mutex_init(&self->lock, NULL); /* before anything can fail: dealloc destroys them */
    pthread_cond_init(&self->wake, NULL);
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(self);
        return NULL;
    }
    self->done_read = fds[0];
    self->done_write = fds[1];
    fcntl(self->done_read, F_SETFL, O_NONBLOCK);
    return (PyObject *)self;
}

PyDoc_STRVAR(submit_doc, "submit(token, path, argv, envp, cwd, log, procs, uid=-1, gid=-1, groups=(), mount_ns=-1, "
                         "umask=-1)\n\nQueue a start with spawn()'s arguments; `collect()` returns its outcome with "
                         "`token`. The\nmount namespace descriptor must stay open until then.");

static PyObject *launcher_submit(Launcher *self, PyObject *args) {
    PyObject *token, *path, *argv, *envp, *cwd, *log, *procs, *groups = NULL;
    long uid = -1, gid = -1;
    int mount_ns = -1, job_umask = -1;
    if (!PyArg_ParseTuple(args, "O" JOB_FORMAT ":submit", &token, &path, &argv, &envp, &cwd, &log, &procs, &uid, &gid,
                          &groups, &mount_ns, &job_umask))
        return NULL;
    if (self->stopping) {
        PyErr_SetString(PyExc_RuntimeError, "the launcher is closed");
        return NULL;
    }
    struct launch *launch = calloc(1, sizeof *launch);
    if (launch == NULL) return PyErr_NoMemory();
    if (job_from_args(&launch->job, path, argv, envp, cwd, log, procs, uid, gid, groups, mount_ns, job_umask) < 0) {
        free(launch);
        return NULL;
    }
    if (!self->running) {
        /* The thread starts with every signal blocked (it keeps them so: the main thread's business). */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        int error = pthread_create(&self->thread, NULL, launcher_thread, self);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (error != 0) {
            free_job(&launch->job);
            free(launch);
            errno = error;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        self->running = 1;
    }
    Py_INCREF(token);
    launch->token = token;
    pthread_mutex_lock(&self->lock);
    if (self->tail != NULL)
        self->tail->next = launch;
    else
        self->head = launch;
    self->tail = launch;
    pthread_cond_signal(&self->wake);
    pthread_mutex_unlock(&self->lock);
    Py_RETURN_NONE;
}

/* (token, pid, pidfd, None) for a job that exec'd, (token, -1, -1, OSError) for one that did not. */
static PyObject *outcome(struct launch *launch) {
    PyObject *error = Py_None;
    Py_INCREF(error);
    if (launch->pid < 0 || launch->failed.step != STEP_NONE) {
        if (launch->pid < 0) {
            errno = launch->error;
            PyErr_SetFromErrno(PyExc_OSError);
        } else {
            raise_failure(&launch->failed, launch->job.procs, launch->job.cwd, launch->job.log, launch->job.path);
        }
        PyObject *type, *traceback;
        Py_DECREF(error);
        PyErr_Fetch(&type, &error, &traceback);
        PyErr_NormalizeException(&type, &error, &traceback);
        Py_XDECREF(type);
        Py_XDECREF(traceback);
        if (error == NULL) return NULL;
    }
    int failed = error != Py_None;
    return Py_BuildValue("(OiiN)", launch->token, failed ? -1 : (int)launch->pid, failed ? -1 : launch->pidfd, error);
}

PyDoc_STRVAR(collect_doc, "collect() -> [(token, pid, pidfd, error)]\n\nThe launches finished since the last call, in "
                          "order: pid and pidfd (-1 when it could not\nbe opened) with error None, or pid -1 and the "
                          "OSError of the step that failed.");

static PyObject *launcher_collect(Launcher *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *list = PyList_New(0);
    if (list == NULL) return NULL;
    struct launch *batch[64];
    for (;;) {
        ssize_t got = read(self->done_read, batch, sizeof batch);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) break; /* EAGAIN: nothing more now */
        for (size_t i = 0; i < (size_t)got / sizeof batch[0]; i++) {
            struct launch *launch = batch[i];
            PyObject *item = outcome(launch);
            Py_DECREF(launch->token);
            free_job(&launch->job);
            free(launch);
            if (item == NULL || PyList_Append(list, item) < 0) {
                Py_XDECREF(item);
                Py_DECREF(list);
                return NULL; /* the rest stay readable for the next call */
            }
            Py_DECREF(item);
        }
    }
    return list;
}

static PyObject *launcher_fileno(Launcher *self, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(self->done_read);
}

/* Stop the thread once everything submitted has started (its outcomes stay for `collect`). */
static void launcher_stop(Launcher *self) {
    if (!self->running) return;
    pthread_mutex_lock(&self->lock);
    self->stopping = 1;
    pthread_cond_signal(&self->wake);
    pthread_mutex_unlock(&self->lock);
    Py_BEGIN_ALLOW_THREADS
    pthread_join(self->thread, NULL);
    Py_END_ALLOW_THREADS
    self->running = 0;
}

static PyObject *launcher_close(Launcher *self, PyObject *Py_UNUSED(ignored)) {
    self->stopping = 1;
    launcher_stop(self);
    Py_RETURN_NONE;
}

static void launcher_dealloc(Launcher *self) {
    self->stopping = 1;
    launcher_stop(self);
    PyObject *rest = self->done_read >= 0 ? launcher_collect(self, NULL) : NULL; /* frees what is left */
    Py_XDECREF(rest);
    PyErr_Clear();
    if (self->done_read >= 0) close(self->done_read);
    if (self->done_write >= 0) close(self->done_write);
    pthread_mutex_destroy(&self->lock);
    pthread_cond_destroy(&self->wake);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef launcher_methods[] = {
    {"submit", (PyCFunction)launcher_submit, METH_VARARGS, submit_doc},
    {"collect", (PyCFunction)launcher_collect, METH_NOARGS, collect_doc},
    {"fileno", (PyCFunction)launcher_fileno, METH_NOARGS, "The descriptor readable when a launch has finished."},
    {"close", (PyCFunction)launcher_close, METH_NOARGS,
     "Stop the thread once every submitted job has started; their outcomes stay for collect()."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LauncherType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kiln.executors._spawn.Launcher",
    .tp_basicsize = sizeof(Launcher),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Starts jobs as spawn() does, on a thread of its own: submit() returns at once.",
    .tp_new = launcher_new,
    .tp_dealloc = (destructor)launcher_dealloc,
    .tp_methods = launcher_methods,
};

static PyMethodDef methods[] = {
    {"spawn", spawn, METH_VARARGS, spawn_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "kiln.executors._spawn", "Start attempts inside their cgroups without a shell.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__spawn(void) {
    if (PyType_Ready(&LauncherType) < 0) return NULL;
    PyObject *module_object = PyModule_Create(&module);
    if (module_object == NULL) return NULL;
    Py_INCREF(&LauncherType);
    if (PyModule_AddObject(module_object, "Launcher", (PyObject *)&LauncherType) < 0) {
        Py_DECREF(&LauncherType);
        Py_DECREF(module_object);
        return NULL;
    }
    return module_object;
}
