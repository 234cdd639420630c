// Restartable sequences on x86-64, on the rseq area glibc registered for each
// thread (<sys/rseq.h>: __rseq_offset from the thread pointer).
//
// Each critical section stores its descriptor's address in rseq->rseq_cs,
// reads the CPU number, and ends in exactly one committing store. If the
// thread is preempted, migrated or signalled before that store, the kernel
// moves it to the abort handler, which is preceded by the signature glibc
// registered (RSEQ_SIG, 0x53053053 on x86). The callers loop on abort.
//
// The CPU comes from cpu_id_start: inside a section it equals cpu_id (a
// move to another CPU aborts the section), and unlike cpu_id (-2 there) it
// is a possible CPU number even in a thread without rseq registered (0, or
// the last one the kernel wrote), so a section that only reads a word that
// is always empty can run in lock mode too (percpu.hpp, fast_path_word).
//
// Every section addresses a per-CPU word as  base + (cpu << shift)  where
// base already includes the slot's offset.
#pragma once
#include <cstdint>
#include <sys/rseq.h>

// Every function that contains (or inlines) a critical section must have
// internal linkage: an inline function with external linkage becomes a COMDAT
// copy per object file, the linker keeps one, and the __rseq_cs descriptors of
// the discarded copies then point into discarded code. SR_RSEQ_FN says so.
#define SR_RSEQ_FN static inline __attribute__((always_inline))

namespace sysref::percpu::rseq_x86 {

// glibc's __rseq_offset, copied at start-up (percpu.cpp, ensure_init) into
// a hidden global so a section costs one load for it, not two through the
// GOT.
[[gnu::visibility("hidden")]] extern ptrdiff_t cached_rseq_offset;
inline ptrdiff_t rseq_offset() { return cached_rseq_offset; }

enum result { ok = 0, mismatch = 1, aborted = -1 };

inline constexpr int cpu_shift = 16;  // 64 KiB of slots per CPU

// The descriptor, the signature and the abort trampoline; start label 1,
// post-commit label 2, descriptor 3, abort 4.
#define SR_RSEQ_PROLOGUE                                  \
  "0:\n\t"                                                \
  ".pushsection __rseq_cs, \"aw\"\n\t"                    \
  ".balign 32\n\t"                                        \
  "3:\n\t"                                                \
  ".long 0, 0\n\t"                                        \
  ".quad 1f, (2f - 1f), 4f\n\t"                           \
  ".popsection\n\t"                                       \
  "leaq 3b(%%rip), %%rax\n\t"                             \
  "movq %%rax, %%fs:8(%[roff])\n\t"                       \
  "1:\n\t"                                                \
  "movl %%fs:(%[roff]), %%eax\n\t"                        \
  "shlq $16, %%rax\n\t"                                   \
  "addq %[base], %%rax\n\t"

// An abort handler that simply runs the section again from label 0 (it sets
// rseq_cs anew): for sections whose inputs sit in registers they do not
// change, and which write nothing that a rerun would misread.
#define SR_RSEQ_EPILOGUE_RETRY                            \
  "2:\n\t"                                                \
  ".pushsection __rseq_failure, \"ax\"\n\t"               \
  ".byte 0x0f, 0xb9, 0x3d\n\t"                            \
  ".long 0x53053053\n\t"                                  \
  "4:\n\t"                                                \
  "jmp 0b\n\t"                                            \
  ".popsection\n\t"

// The commit of a counted list: one 16-byte store of {lo, hi} at disp(rax).
#define SR_RSEQ_COMMIT_PAIR(lo, hi, disp)                 \
  "movq " lo ", %%xmm0\n\t"                               \
  "movq " hi ", %%xmm1\n\t"                               \
  "punpcklqdq %%xmm1, %%xmm0\n\t"                         \
  "movdqu %%xmm0, " disp "(%%rax)\n\t"

#define SR_RSEQ_EPILOGUE                                  \
  "2:\n\t"                                                \
  ".pushsection __rseq_failure, \"ax\"\n\t"               \
  ".byte 0x0f, 0xb9, 0x3d\n\t"                            \
  ".long 0x53053053\n\t"                                  \
  "4:\n\t"                                                \
  "jmp %l[abort]\n\t"                                     \
  ".popsection\n\t"

// Counted lists: the slot holds three words [pops][W][pushes]; base is &W.
// W heads a list: W & mask == 0 means empty (W is then 0 or a terminator).
// Each operation commits the new W together with its counter in one 16-byte
// store: one instruction, so preemption sees all of it or none of it, and
// each 8-byte word is written whole for readers on other CPUs.

// Pop: *out = W, then commit {pops + 1, W = *(uintptr_t *)W}.
SR_RSEQ_FN result pop_counted(uintptr_t base, uintptr_t mask, uintptr_t *out) {
  asm goto(SR_RSEQ_PROLOGUE
           "movq (%%rax), %%rcx\n\t"
           "testq %[mask], %%rcx\n\t"
           "jz %l[mismatch_]\n\t"
           "movq (%%rcx), %%rdx\n\t"
           "movq %%rcx, (%[out])\n\t"
           "movq -8(%%rax), %%rcx\n\t"
           "incq %%rcx\n\t"
           SR_RSEQ_COMMIT_PAIR("%%rcx", "%%rdx", "-8")
           SR_RSEQ_EPILOGUE
           :
           : [roff] "r"(rseq_offset()), [base] "r"(base), [mask] "r"(mask), [out] "r"(out)
           : "rax", "rcx", "rdx", "xmm0", "xmm1", "memory", "cc"
           : mismatch_, abort);
  return ok;
mismatch_:
  return mismatch;
abort:
  return aborted;
}

// Push obj if the list belongs to owner (W & notmask == owner), storing tag
// in obj's second word: *obj = W, obj[1] = tag, then commit
// {W = obj, pushes + 1}. Both stores to obj come before the commit, so an
// aborted attempt may leave tag in obj[1] without having pushed obj.
// With Check, a second word already equal to tag is reported (duplicate)
// before anything is written, and *checked is set to 1 once the check passed
// and before tag is stored: the caller learns whether tag in obj[1] may be
// its own doing. The check runs only once the list is known to be owner's,
// so obj is memory the caller may read.
template <bool Check>
SR_RSEQ_FN int push_counted(uintptr_t base, uintptr_t notmask, uintptr_t owner, uintptr_t obj,
                            uintptr_t tag, uintptr_t *checked) {
  asm goto(SR_RSEQ_PROLOGUE
           "movq (%%rax), %%rcx\n\t"
           "movq %%rcx, %%rdx\n\t"
           "andq %[notmask], %%rdx\n\t"
           "cmpq %[owner], %%rdx\n\t"
           "jne %l[mismatch_]\n\t"
           ".if %c[check]\n\t"
           "cmpq %[tag], 8(%[obj])\n\t"
           "je %l[duplicate]\n\t"
           "movq $1, (%[checked])\n\t"
           ".endif\n\t"
           "movq %[tag], 8(%[obj])\n\t"
           "movq %%rcx, (%[obj])\n\t"
           "movq 8(%%rax), %%rcx\n\t"
           "incq %%rcx\n\t"
           SR_RSEQ_COMMIT_PAIR("%[obj]", "%%rcx", "0")
           SR_RSEQ_EPILOGUE
           :
           : [roff] "r"(rseq_offset()), [base] "r"(base), [notmask] "r"(notmask),
             [owner] "r"(owner), [obj] "r"(obj), [tag] "r"(tag), [checked] "r"(checked),
             [check] "i"(Check ? 1 : 0)
           : "rax", "rcx", "rdx", "xmm0", "xmm1", "memory", "cc"
           : mismatch_, duplicate, abort);
  return ok;
mismatch_:
  return mismatch;
duplicate:
  return 2;
abort:
  return aborted;
}

// If the word equals expect, commit desired.
SR_RSEQ_FN result compare_store(uintptr_t base, uintptr_t expect, uintptr_t desired) {
  asm goto(SR_RSEQ_PROLOGUE
           "cmpq %[expect], (%%rax)\n\t"
           "jne %l[mismatch_]\n\t"
           "movq %[desired], (%%rax)\n\t"
           SR_RSEQ_EPILOGUE
           :
           : [roff] "r"(rseq_offset()), [base] "r"(base), [expect] "r"(expect),
             [desired] "r"(desired)
           : "rax", "memory", "cc"
           : mismatch_, abort);
  return ok;
mismatch_:
  return mismatch;
abort:
  return aborted;
}

// Add n to the word: one read-modify-write instruction is its own commit.
SR_RSEQ_FN result add(uintptr_t base, uint64_t n) {
  asm goto(SR_RSEQ_PROLOGUE
           "addq %[n], (%%rax)\n\t"
           SR_RSEQ_EPILOGUE
           :
           : [roff] "r"(rseq_offset()), [base] "r"(base), [n] "r"(n)
           : "rax", "memory", "cc"
           : abort);
  return ok;
abort:
  return aborted;
}

// Counted stacks (magazines): the slot word points to a stack whose first
// word packs [hi counter:24 | lo counter:24 | count:16], capacity (uint32)
// at +8, items from +24. A pop commits word + pop_delta (count - 1, hi + 1),
// a push word + push_delta (count + 1, lo + 1): one 8-byte store each. A pop
// refuses (mismatch) once the word reaches limit, so the slow path can fold
// the counters before they overflow.
// rcx = the slot's stack (none: mismatch), rdx = its word, r8d = its count.
#define SR_STACK_LOAD                                     \
  "movq (%%rax), %%rcx\n\t"                               \
  "testq %%rcx, %%rcx\n\t"                                \
  "jz %l[mismatch_]\n\t"                                  \
  "movq (%%rcx), %%rdx\n\t"                               \
  "movzwl %%dx, %%r8d\n\t"

// Returns the popped item, 0 (no stack, or empty) or 1 (the word reached
// limit: its counters must be folded first). Aborts rerun the section.
SR_RSEQ_FN uintptr_t stack_pop(ptrdiff_t roff, uintptr_t base, uint64_t limit, uint64_t pop_delta) {
  uintptr_t item;
  asm goto(SR_RSEQ_PROLOGUE
           SR_STACK_LOAD
           "testl %%r8d, %%r8d\n\t"
           "jz %l[mismatch_]\n\t"
           "cmpq %[limit], %%rdx\n\t"
           "jae %l[fold_due]\n\t"
           "movq 16(%%rcx,%%r8,8), %[item]\n\t"
           "addq %[delta], %%rdx\n\t"
           "movq %%rdx, (%%rcx)\n\t"
           SR_RSEQ_EPILOGUE_RETRY
           : [item] "=&r"(item)
           : [roff] "r"(roff), [base] "r"(base), [limit] "r"(limit), [delta] "r"(pop_delta)
           : "rax", "rcx", "rdx", "r8", "memory", "cc"
           : mismatch_, fold_due);
  return item;
mismatch_:
  return 0;
fold_due:
  return 1;
}

// The same section for fast paths that send every refusal (no stack, empty,
// fold due) to one slow path: true with item set, or false. The caller
// branches on the labels themselves, with no return value to test again.
// The fold is due when the new word would have its top bit set (the pop
// counter's top bit: percpu.hpp, stack_fold_limit), which the add that
// makes the new word tells by its sign: no compare, no register for a
// limit, and no second look at the word the previous get or put just
// stored.
SR_RSEQ_FN bool stack_pop_or_refuse(ptrdiff_t roff, uintptr_t base, uint64_t pop_delta, uintptr_t &item) {
  asm goto(SR_RSEQ_PROLOGUE
           SR_STACK_LOAD
           "testl %%r8d, %%r8d\n\t"
           "jz %l[mismatch_]\n\t"
           "movq 16(%%rcx,%%r8,8), %[item]\n\t"
           "addq %[delta], %%rdx\n\t"
           "js %l[mismatch_]\n\t"
           "movq %%rdx, (%%rcx)\n\t"
           SR_RSEQ_EPILOGUE_RETRY
           : [item] "=&a"(item)  // rax: the slot address until the item replaces it
           : [roff] "r"(roff), [base] "rm"(base), [delta] "r"(pop_delta)
           : "rcx", "rdx", "r8", "memory", "cc"
           : mismatch_);
  return true;
mismatch_:
  return false;
}

// Pushes obj unless there is no stack or it is full (false). Aborts rerun.
SR_RSEQ_FN bool stack_push(ptrdiff_t roff, uintptr_t base, uint64_t push_delta, uintptr_t obj) {
  asm goto(SR_RSEQ_PROLOGUE
           SR_STACK_LOAD
           "cmpl 8(%%rcx), %%r8d\n\t"
           "jae %l[mismatch_]\n\t"
           "movq %[obj], 24(%%rcx,%%r8,8)\n\t"
           "addq %[delta], %%rdx\n\t"
           "movq %%rdx, (%%rcx)\n\t"
           SR_RSEQ_EPILOGUE_RETRY
           :
           : [roff] "r"(roff), [base] "rm"(base), [delta] "re"(push_delta), [obj] "r"(obj)
           : "rax", "rcx", "rdx", "r8", "memory", "cc"
           : mismatch_);
  return true;
mismatch_:
  return false;
}

// If the two words at base are {e0, e1}, commit {n0, n1} (one 16-byte store).
SR_RSEQ_FN result compare_store_pair(uintptr_t base, uintptr_t e0, uintptr_t e1, uintptr_t n0,
                                     uintptr_t n1) {
  asm goto(SR_RSEQ_PROLOGUE
           "cmpq %[e0], (%%rax)\n\t"
           "jne %l[mismatch_]\n\t"
           "cmpq %[e1], 8(%%rax)\n\t"
           "jne %l[mismatch_]\n\t"
           SR_RSEQ_COMMIT_PAIR("%[n0]", "%[n1]", "0")
           SR_RSEQ_EPILOGUE
           :
           : [roff] "r"(rseq_offset()), [base] "r"(base), [e0] "r"(e0), [e1] "r"(e1),
             [n0] "r"(n0), [n1] "r"(n1)
           : "rax", "xmm0", "xmm1", "memory", "cc"
           : mismatch_, abort);
  return ok;
mismatch_:
  return mismatch;
abort:
  return aborted;
}

// Swap the slot's two stack pointers {loaded, prev} -> {prev, loaded} if prev
// is a stack that is not empty (WantRounds) or not full (!WantRounds). Prev
// is read inside the section, after the slot named it: only this CPU can
// take it out of the slot, so it cannot be freed under us.
template <bool WantRounds>
SR_RSEQ_FN result stack_swap_if(uintptr_t base) {
  asm goto(SR_RSEQ_PROLOGUE
           "movq (%%rax), %%rcx\n\t"
           "movq 8(%%rax), %%rdx\n\t"
           "testq %%rdx, %%rdx\n\t"
           "jz %l[mismatch_]\n\t"
           "movq (%%rdx), %%r8\n\t"
           "movzwl %%r8w, %%r8d\n\t"
           ".if %c[rounds]\n\t"
           "testl %%r8d, %%r8d\n\t"
           "jz %l[mismatch_]\n\t"
           ".else\n\t"
           "cmpl 8(%%rdx), %%r8d\n\t"
           "jae %l[mismatch_]\n\t"
           ".endif\n\t"
           SR_RSEQ_COMMIT_PAIR("%%rdx", "%%rcx", "0")
           SR_RSEQ_EPILOGUE
           :
           : [roff] "r"(rseq_offset()), [base] "r"(base), [rounds] "i"(WantRounds ? 1 : 0)
           : "rax", "rcx", "rdx", "r8", "xmm0", "xmm1", "memory", "cc"
           : mismatch_, abort);
  return ok;
mismatch_:
  return mismatch;
abort:
  return aborted;
}

// If the loaded stack's word has reached limit, *out = word and commit
// word & count mask: its counters leave it (the caller adds them elsewhere).
SR_RSEQ_FN result stack_take_counts(uintptr_t base, uint64_t limit, uint64_t *out) {
  asm goto(SR_RSEQ_PROLOGUE
           "movq (%%rax), %%rcx\n\t"
           "testq %%rcx, %%rcx\n\t"
           "jz %l[mismatch_]\n\t"
           "movq (%%rcx), %%rdx\n\t"
           "cmpq %[limit], %%rdx\n\t"
           "jb %l[mismatch_]\n\t"
           "movq %%rdx, (%[out])\n\t"
           "movzwl %%dx, %%edx\n\t"
           "movq %%rdx, (%%rcx)\n\t"
           SR_RSEQ_EPILOGUE
           :
           : [roff] "r"(rseq_offset()), [base] "r"(base), [limit] "r"(limit), [out] "r"(out)
           : "rax", "rcx", "rdx", "memory", "cc"
           : mismatch_, abort);
  return ok;
mismatch_:
  return mismatch;
abort:
  return aborted;
}

#undef SR_RSEQ_PROLOGUE
#undef SR_RSEQ_EPILOGUE
#undef SR_RSEQ_EPILOGUE_RETRY
#undef SR_RSEQ_COMMIT_PAIR
#undef SR_STACK_LOAD

}  // namespace sysref::percpu::rseq_x86
