/* glommio's barrier before each sleep, answered with a fence: every
 * syscall(2) call of the process lands here under `--wrap=syscall` (x86-64
 * only; barrier.rs says why a fence is sound there and what it saves).
 * In C, not Rust: every binary the package links must define the wrapper,
 * those that do not use the library too (std's futexes call `syscall`), and
 * build.rs passes this object to each of them. A variadic function, as
 * libc's: it reads six arguments and hands all six on, as musl's `syscall`
 * does; the kernel ignores those a call does not have. */
#include <linux/membarrier.h>
#include <stdarg.h>
#include <sys/syscall.h>

long __real_syscall(long number, ...);

static __thread unsigned long long answered;

/* How many sleep barriers this thread had answered with a fence. */
unsigned long long remora_barriers_answered(void) { return answered; }

long __wrap_syscall(long number, ...) {
    va_list ap;
    va_start(ap, number);
    long a1 = va_arg(ap, long), a2 = va_arg(ap, long), a3 = va_arg(ap, long);
    long a4 = va_arg(ap, long), a5 = va_arg(ap, long), a6 = va_arg(ap, long);
    va_end(ap);
    /* The command and flags are C ints: only their low halves are the
     * caller's, as the kernel reads them. */
    if (number == SYS_membarrier && (int)a1 == MEMBARRIER_CMD_PRIVATE_EXPEDITED && (int)a2 == 0) {
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        answered++;
        return 0;
    }
    return __real_syscall(number, a1, a2, a3, a4, a5, a6);
}
