/*
 * The gateway's compiled lane: steady-state object I/O of paired connections,
 * relayed by one C thread that never takes the GIL.
 *
 * How it works: the relay (lane.py) lends the lane a pair - a client
 * connection and the upstream connection to a node it is paired with - once
 * the pair is quiet and nothing needs the gateway's judgment.  The lane's
 * thread waits in its own epoll over every pair it holds, one request at a
 * time per pair (tgt's store sends one request per connection and waits for
 * its answer): it reads a request (header, then its payload straight into a
 * buffer of its own size), sends it to the node, and passes the answer on to
 * the client as it arrives.  An object read or write so costs two receives
 * and two sends and no Python.  An answer of STREAM_FROM bytes or more moves
 * from the node to the client through a pipe by splice(2), its bytes never
 * copied into the lane's memory (lane_c/splice.c).
 *
 * Anything that needs judgment goes back to Python (a "hand-back": the pair
 * leaves the lane's epoll, a record joins the hand-back list and an eventfd
 * wakes the gateway's loop, which re-registers both connections):
 *   REQUEST   a request the lane does not relay (not a READ_OBJ/WRITE_OBJ of a
 *             data object, too large for the lane's budget, the lane paused,
 *             bytes that followed a request before its answer) - its bytes
 *             go back unsent, to be framed by Python as if just received;
 *   ANSWER    an answer with a non-zero result, a higher epoch than the lane
 *             was told, or a write's answer while the lane is paused (the
 *             replay must keep it) - the request and the whole answer;
 *   UPSTREAM  the node's connection failed, sent what nobody asked for, or did
 *             not answer in time - the request, if one was in flight (BROKEN:
 *             part of its answer already reached the client);
 *   CLOSED    the client closed or its connection failed;
 *   STALLED   the client stopped reading an answer - its unsent tail;
 *   IDLE      the pair was quiet for ``idle`` seconds, or the lane paused, or
 *             ``recall`` asked for the quiet pairs (requests wait for an upstream).
 * The lane never closes a file descriptor: Python owns them.
 *
 * Where: this file is the Python type; lane_c/relay.c one pair's request and
 * answer; lane_c/splice.c a large answer through a pipe; lane_c/handback.c
 * the hand-backs, the counters and the pool of pipes; lane_c/thread.c
 * the thread's loop and the sweep; lane_c/lane.h the layouts they share.
 *
 * Shared with Python threads, under ``mu``: the adopt queue, the hand-back
 * list and the per-VDI counters.  ``paused``, ``epoch`` and ``inflight_writes``
 * are atomics.  Everything else (the pairs, their buffers, the budget) belongs
 * to the lane's thread.  Memory: a request's cost (its payload, or its
 * answer's length for a read) is taken from the lane's budget before it is
 * relayed; a request that does not fit goes back to Python's admission.
 */

#include "lane_c/lane.h"

/* -- the Python type ---------------------------------------------------------- */

static void wake_lane(Lane *L) {
    uint64_t one = 1;
    ssize_t w = write(L->cmd_fd, &one, sizeof(one));
    (void)w;
}

static int Lane_init(Lane *L, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"max_payload", "budget", "idle", "request_timeout", "stall",
                             "splice", NULL};
    Py_ssize_t max_payload, budget;
    double idle, request_timeout, stall;
    int splice = 1;
    if (L->running) {
        PyErr_SetString(PyExc_RuntimeError, "the lane is already running");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nnddd|p", kwlist, &max_payload, &budget,
                                     &idle, &request_timeout, &stall, &splice))
        return -1;
    if (max_payload <= 0 || budget < 0 || idle <= 0 || request_timeout <= 0 || stall <= 0) {
        PyErr_SetString(PyExc_ValueError,
                        "max_payload, idle, request_timeout and stall must be positive, "
                        "budget not negative");
        return -1;
    }
    L->max_payload = (size_t)max_payload;
    L->budget = (size_t)budget;
    L->idle = idle;
    L->request_timeout = request_timeout;
    L->stall = stall;
    L->splice = splice;
    L->head.next = L->head.prev = &L->head;
    L->epfd = epoll_create1(EPOLL_CLOEXEC);
    L->cmd_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    L->note_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    L->scratch = malloc(SCRATCH);
    if (L->epfd < 0 || L->cmd_fd < 0 || L->note_fd < 0 || L->scratch == NULL) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0};
    if (epoll_ctl(L->epfd, EPOLL_CTL_ADD, L->cmd_fd, &ev) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    pthread_mutex_init(&L->mu, NULL);
    int err = pthread_create(&L->thread, NULL, lane_run, L);
    if (err) {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    L->running = 1;
    return 0;
}

static PyObject *Lane_close(Lane *L, PyObject *Py_UNUSED(ignored)) {
    if (L->running) {
        pthread_mutex_lock(&L->mu);
        L->stop = 1;
        pthread_mutex_unlock(&L->mu);
        wake_lane(L);
        Py_BEGIN_ALLOW_THREADS
        pthread_join(L->thread, NULL);
        Py_END_ALLOW_THREADS
        L->running = 0;
        /* the pairs still held: their connections are Python's to close */
        struct pair *p = L->head.next;
        while (p != &L->head) {
            struct pair *next = p->next;
            p->next = L->graveyard;
            L->graveyard = p;
            p = next;
        }
        L->head.next = L->head.prev = &L->head;
        L->npairs = 0;
        lane_bury(L);
        lane_pipes_close(L);
    }
    Py_RETURN_NONE;
}

static void free_handbacks(struct handback *h) {
    while (h != NULL) {
        struct handback *next = h->next;
        free(h->req);
        free(h->ans);
        free(h->rest);
        free(h);
        h = next;
    }
}

static void Lane_dealloc(Lane *L) {
    Lane_close(L, NULL);
    free_handbacks(L->hb_head);
    struct adopt *a = L->adopts;
    while (a != NULL) {
        struct adopt *next = a->next;
        free(a);
        a = next;
    }
    if (L->epfd > 0)
        close(L->epfd);
    if (L->cmd_fd > 0)
        close(L->cmd_fd);
    if (L->note_fd > 0)
        close(L->note_fd);
    free(L->scratch);
    free(L->stats);
    Py_TYPE(L)->tp_free((PyObject *)L);
}

static int check_running(Lane *L) {
    if (!L->running) {
        PyErr_SetString(PyExc_RuntimeError, "the lane is closed");
        return -1;
    }
    return 0;
}

static PyObject *Lane_fileno(Lane *L, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(L->note_fd);
}

static PyObject *Lane_adopt(Lane *L, PyObject *args) {
    long long token;
    int down, up;
    if (!PyArg_ParseTuple(args, "Lii", &token, &down, &up) || check_running(L) < 0)
        return NULL;
    if (down < 0 || up < 0 || down == up) {
        PyErr_SetString(PyExc_ValueError, "two distinct open file descriptors are needed");
        return NULL;
    }
    struct adopt *a = malloc(sizeof(*a));
    if (a == NULL)
        return PyErr_NoMemory();
    a->token = token;
    a->down = down;
    a->up = up;
    pthread_mutex_lock(&L->mu);
    a->next = L->adopts;
    L->adopts = a;
    pthread_mutex_unlock(&L->mu);
    wake_lane(L);
    Py_RETURN_NONE;
}

static PyObject *Lane_set_epoch(Lane *L, PyObject *args) {
    unsigned int epoch;
    if (!PyArg_ParseTuple(args, "I", &epoch))
        return NULL;
    raise_epoch(L, epoch);
    Py_RETURN_NONE;
}

static PyObject *Lane_pause(Lane *L, PyObject *Py_UNUSED(ignored)) {
    if (!atomic_exchange(&L->paused, 1)) {
        atomic_store(&L->recall, 1);
        if (L->running)
            wake_lane(L);
    }
    Py_RETURN_NONE;
}

static PyObject *Lane_recall(Lane *L, PyObject *Py_UNUSED(ignored)) {
    atomic_store(&L->recall, 1);
    if (L->running)
        wake_lane(L);
    Py_RETURN_NONE;
}

static PyObject *Lane_resume(Lane *L, PyObject *Py_UNUSED(ignored)) {
    atomic_store(&L->paused, 0);
    Py_RETURN_NONE;
}

static PyObject *Lane_paused(Lane *L, void *Py_UNUSED(closure)) {
    return PyBool_FromLong(atomic_load(&L->paused));
}

static PyObject *Lane_inflight_writes(Lane *L, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLongLong(atomic_load(&L->inflight_writes));
}

static PyObject *Lane_handbacks(Lane *L, PyObject *Py_UNUSED(ignored)) {
    uint64_t v;
    ssize_t r = read(L->note_fd, &v, sizeof(v));
    (void)r;
    pthread_mutex_lock(&L->mu);
    struct handback *h = L->hb_head;
    L->hb_head = L->hb_tail = NULL;
    L->noted = 0;
    pthread_mutex_unlock(&L->mu);
    PyObject *list = PyList_New(0);
    if (list == NULL) {
        free_handbacks(h);
        return NULL;
    }
    for (struct handback *i = h; i != NULL; i = i->next) {
        /* y# gives None for NULL: an empty field is b"" */
        PyObject *t = Py_BuildValue("(Liy#y#y#Os)", i->token, i->reason,
                                    i->req ? (char *)i->req : "", (Py_ssize_t)i->req_len,
                                    i->ans ? (char *)i->ans : "", (Py_ssize_t)i->ans_len,
                                    i->rest ? (char *)i->rest : "", (Py_ssize_t)i->rest_len,
                                    i->broken ? Py_True : Py_False, i->msg);
        if (t == NULL || PyList_Append(list, t) < 0) {
            Py_XDECREF(t);
            Py_DECREF(list);
            free_handbacks(h);
            return NULL;
        }
        Py_DECREF(t);
    }
    free_handbacks(h);
    return list;
}

static PyObject *Lane_take_stats(Lane *L, PyObject *Py_UNUSED(ignored)) {
    pthread_mutex_lock(&L->mu);
    struct vstat *stats = L->stats;
    size_t cap = L->stats_cap;
    L->stats = NULL;
    L->stats_cap = L->stats_used = 0;
    pthread_mutex_unlock(&L->mu);
    PyObject *list = PyList_New(0);
    for (size_t i = 0; list != NULL && i < cap; i++) {
        struct vstat *s = &stats[i];
        if (!s->used)
            continue;
        PyObject *t = Py_BuildValue("(kKKKKdd)", (unsigned long)s->vid, s->reads, s->writes,
                                    s->read_bytes, s->write_bytes, s->busy, s->max);
        if (t == NULL || PyList_Append(list, t) < 0) {
            Py_XDECREF(t);
            Py_CLEAR(list);
        } else {
            Py_DECREF(t);
        }
    }
    free(stats);
    return list;
}

static PyObject *Lane_counts(Lane *L, PyObject *Py_UNUSED(ignored)) {
    static const char *names[] = {"idle", "request", "answer", "upstream", "closed", "stalled"};
    pthread_mutex_lock(&L->mu);
    unsigned long long relayed = L->relayed, handed[6];
    memcpy(handed, L->handed, sizeof(handed));
    pthread_mutex_unlock(&L->mu);
    PyObject *d = Py_BuildValue("{s:L,s:K,s:n,s:L,s:K}", "pairs",
                                (long long)atomic_load(&L->npairs), "relayed", relayed,
                                "budget_used", (Py_ssize_t)atomic_load(&L->used),
                                "inflight_writes", (long long)atomic_load(&L->inflight_writes),
                                "spliced", (unsigned long long)atomic_load(&L->spliced));
    if (d == NULL)
        return NULL;
    PyObject *h = PyDict_New();
    for (int i = 0; h != NULL && i < 6; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(handed[i]);
        if (v == NULL || PyDict_SetItemString(h, names[i], v) < 0)
            Py_CLEAR(h);
        Py_XDECREF(v);
    }
    if (h == NULL || PyDict_SetItemString(d, "handed_back", h) < 0) {
        Py_XDECREF(h);
        Py_DECREF(d);
        return NULL;
    }
    Py_DECREF(h);
    return d;
}

static PyMethodDef Lane_methods[] = {
    {"fileno", (PyCFunction)Lane_fileno, METH_NOARGS,
     "The eventfd that is readable while hand-backs wait."},
    {"adopt", (PyCFunction)Lane_adopt, METH_VARARGS,
     "adopt(token, down_fd, up_fd): relay a quiet pair until it needs judgment."},
    {"set_epoch", (PyCFunction)Lane_set_epoch, METH_VARARGS,
     "The highest epoch the gateway has seen; a higher one in an answer is handed back."},
    {"pause", (PyCFunction)Lane_pause, METH_NOARGS,
     "Take no new request; every pair comes back at its next request boundary."},
    {"resume", (PyCFunction)Lane_resume, METH_NOARGS, "Relay again after a pause."},
    {"recall", (PyCFunction)Lane_recall, METH_NOARGS,
     "Give back every pair that waits for its client's next request (now)."},
    {"inflight_writes", (PyCFunction)Lane_inflight_writes, METH_NOARGS,
     "Writes sent to a node and not yet answered or handed back."},
    {"handbacks", (PyCFunction)Lane_handbacks, METH_NOARGS,
     "The pairs given back: (token, reason, request, answer, rest, broken, message)."},
    {"take_stats", (PyCFunction)Lane_take_stats, METH_NOARGS,
     "Per-VDI counters since the last call: (vid, reads, writes, read_bytes, write_bytes, "
     "busy_seconds, max_latency)."},
    {"counts", (PyCFunction)Lane_counts, METH_NOARGS, "The lane's counters."},
    {"close", (PyCFunction)Lane_close, METH_NOARGS,
     "Stop the thread; the pairs it held are forgotten (their sockets are the caller's)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Lane_getset[] = {
    {"paused", (getter)Lane_paused, NULL, "Whether the lane is paused.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sheepdog_backend.gateway._lane.Lane",
    .tp_basicsize = sizeof(Lane),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The gateway's compiled lane (see _lane.c).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Lane_init,
    .tp_dealloc = (destructor)Lane_dealloc,
    .tp_methods = Lane_methods,
    .tp_getset = Lane_getset,
};

static struct PyModuleDef lane_module = {
    PyModuleDef_HEAD_INIT, "_lane", "The gateway's compiled lane.", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__lane(void) {
    if (PyType_Ready(&LaneType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&lane_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&LaneType);
    if (PyModule_AddObject(m, "Lane", (PyObject *)&LaneType) < 0 ||
        PyModule_AddIntConstant(m, "IDLE", R_IDLE) < 0 ||
        PyModule_AddIntConstant(m, "REQUEST", R_REQUEST) < 0 ||
        PyModule_AddIntConstant(m, "ANSWER", R_ANSWER) < 0 ||
        PyModule_AddIntConstant(m, "UPSTREAM", R_UPSTREAM) < 0 ||
        PyModule_AddIntConstant(m, "CLOSED", R_CLOSED) < 0 ||
        PyModule_AddIntConstant(m, "STALLED", R_STALLED) < 0 ||
        PyModule_AddIntConstant(m, "STREAM_FROM", STREAM_FROM) < 0 ||
        PyModule_AddIntConstant(m, "PIPE_POOL", PIPE_POOL) < 0) {
        Py_DECREF(&LaneType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
