/* A large answer through a pipe: the node's bytes move to the client by
 * splice(2), node -> pipe -> client, and never enter the lane's memory (see
 * _lane.c).
 *
 * How it works: a read asking for STREAM_FROM bytes or more has its answer's
 * header received alone; a plain answer (result 0, no higher epoch) of
 * STREAM_FROM bytes or more then takes a pipe from the lane's pool
 * (handback.c), relay.c passes its header on (what the client does not take
 * waits in ``out``, ahead of the payload), and ``lane_splice_pump`` moves the
 * payload while either side can: pipe -> client first, then node -> pipe
 * while the pipe has room.
 * The pipe is the pair's buffer: a client slower than the node is fed from
 * it, the node is read again once the client took some.  A client that takes
 * nothing for ``stall`` seconds has the pipe's bytes copied into ``out`` and
 * goes on the copying path (lane_unsplice), whose stall hand-back gives
 * Python the unsent tail.  A client that went away has the rest of the answer
 * received and dropped, so the node's connection stays in step.
 *
 * Edge-triggered watching: a splice from the node that would block while the
 * pipe is empty means the node's socket is drained (its next bytes raise an
 * edge); while the pipe holds bytes it may mean the pipe is full, so the pump
 * waits for the client instead and reads the node again after it.
 *
 * Pipes belong to the lane's thread: a pair holds one from the answer's
 * header to its last byte, then it returns to the pool (PIPE_POOL at most)
 * if it is empty, and is closed otherwise. */

#include "lane.h"

#include <fcntl.h>

static size_t min_size(size_t a, size_t b) { return a < b ? a : b; }

/* The pipe's bytes, read into ``out`` after what waits there (0), or -1. */
static int pipe_to_out(struct pair *p) {
    if (lane_grow(&p->out, &p->out_cap, p->out_len + p->piped) < 0)
        return -1;
    while (p->piped) {
        ssize_t n = read(p->pipe_r, p->out + p->out_len, p->piped);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p->out_len += (size_t)n;
        p->piped -= (size_t)n;
    }
    return 0;
}

/* Off the pipe, onto the copying path: its bytes wait in ``out`` (0), or -1
 * (they could not be kept: the client's frame is broken). */
int lane_unsplice(Lane *L, struct pair *p) {
    int r = pipe_to_out(p);
    lane_pipe_put(L, p);
    return r;
}

/* Move what can move now (see the top of this file): 1 when the answer is
 * out (counted: the caller finishes the pair), 0 when it waits for a side or
 * the pair was handed back. */
int lane_splice_pump(Lane *L, struct pair *p) {
    int down_blocked = 0;
    for (;;) {
        int moved = 0;
        ssize_t n;
        if (p->down_dead)
            p->out_len = p->out_sent = 0;
        if (!p->down_dead && p->out_len > p->out_sent) { /* the header's unsent part */
            size_t before = p->out_sent;
            int r = lane_send_some(p->down, p->out, p->out_len, &p->out_sent, &p->progress);
            moved = p->out_sent > before;
            if (r < 0)
                p->down_dead = 1;
            else if (r > 0)
                down_blocked = 1;
            else
                p->out_len = p->out_sent = 0;
        }
        if (p->down_dead && p->piped) { /* nobody to take them: dropped */
            n = read(p->pipe_r, L->scratch, min_size(p->piped, SCRATCH));
            if (n > 0) {
                p->piped -= (size_t)n;
                moved = 1;
            } else if (n == 0 || errno != EINTR) {
                lane_fail_up(L, p, "the pipe of an answer failed");
                return 0;
            }
        } else if (!down_blocked && p->out_len == p->out_sent && p->piped) {
            size_t left = p->piped;
            unsigned more = p->ans_got < p->ans_len ? SPLICE_F_MORE : 0;
            n = splice(p->pipe_r, NULL, p->down, NULL, left,
                       SPLICE_F_NONBLOCK | SPLICE_F_MOVE | more);
            if (n > 0) {
                p->piped -= (size_t)n;
                p->progress = now_s();
                moved = 1;
            } else if (n < 0 && errno == EAGAIN) {
                down_blocked = 1;
            } else if (n < 0 && errno == EINTR) {
                continue;
            } else {
                p->down_dead = 1; /* the client's connection failed: drop the rest */
                continue;
            }
        }
        if (p->ans_got < p->ans_len && p->piped < p->pipe_cap) {
            size_t want = min_size(p->ans_len - p->ans_got, p->pipe_cap - p->piped);
            n = splice(p->up, NULL, p->pipe_w, NULL, want, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
            if (n > 0) {
                p->ans_got += (size_t)n;
                p->piped += (size_t)n;
                p->progress = now_s();
                moved = 1;
            } else if (n == 0) {
                lane_fail_up(L, p, "the node closed the connection");
                return 0;
            } else if (errno == EINTR) {
                continue;
            } else if (errno != EAGAIN) {
                char msg[96];
                snprintf(msg, sizeof(msg), "receive failed: %s", strerror(errno));
                lane_fail_up(L, p, msg);
                return 0;
            }
        }
        if (p->ans_got == p->ans_len && !p->piped && p->out_len == p->out_sent) {
            lane_want_out(L, p, 0, 0);
            lane_pipe_put(L, p);
            lane_count(L, p, now_s() - p->started);
            return 1;
        }
        if (!moved)
            break;
    }
    lane_want_out(L, p, 0, down_blocked && !p->down_dead);
    if (p->ans_got == p->ans_len)
        p->state = S_OUT;
    return 0;
}
