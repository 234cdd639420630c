// An intrusive red-black tree: nodes live inside the objects (no allocation
// on insert), keyed by a uint64_t the caller's key function reads out of the
// object. The algorithms are the textbook ones (Cormen et al., chapter 13),
// with the parent pointer and the colour packed in one word. Not
// thread-safe: the caller holds the tree's lock.
#pragma once
#include <cstdint>

namespace sysref::rb {

struct node {
  node *left, *right;
  uintptr_t parent_red;  // parent pointer | 1 if red
};

// Key(const node *) -> uint64_t; keys are unique.
template <class Key>
class tree {
 public:
  node *root = nullptr;

  node *find(uint64_t k) const {
    node *n = root;
    while (n) {
      uint64_t nk = Key{}(n);
      if (k == nk) return n;
      n = k < nk ? n->left : n->right;
    }
    return nullptr;
  }

  // The node with the smallest key >= k, or nullptr.
  node *lower_bound(uint64_t k) const {
    node *n = root, *best = nullptr;
    while (n) {
      if (Key{}(n) >= k) {
        best = n;
        n = n->left;
      } else {
        n = n->right;
      }
    }
    return best;
  }

  static node *next(node *n) {
    if (n->right) return leftmost(n->right);
    node *p = parent(n);
    while (p && n == p->right) {
      n = p;
      p = parent(p);
    }
    return p;
  }

  void insert(node *z) {
    uint64_t k = Key{}(z);
    node *p = nullptr, **link = &root;
    while (*link) {
      p = *link;
      link = k < Key{}(p) ? &p->left : &p->right;
    }
    z->left = z->right = nullptr;
    z->parent_red = reinterpret_cast<uintptr_t>(p) | 1;
    *link = z;
    insert_fixup(z);
  }

  void erase(node *z) {
    node *y = z, *x, *xp;
    bool removed_red = red(y);
    if (!z->left) {
      x = z->right;
      xp = parent(z);
      transplant(z, z->right);
    } else if (!z->right) {
      x = z->left;
      xp = parent(z);
      transplant(z, z->left);
    } else {
      y = leftmost(z->right);  // z's successor takes z's place and colour
      removed_red = red(y);
      x = y->right;
      if (parent(y) == z) {
        xp = y;
      } else {
        xp = parent(y);
        transplant(y, y->right);
        y->right = z->right;
        set_parent(y->right, y);
      }
      transplant(z, y);
      y->left = z->left;
      set_parent(y->left, y);
      set_red(y, red(z));
    }
    if (!removed_red) erase_fixup(x, xp);
  }

  // Checks every invariant (order, parent links, no red node with a red
  // child, equal black heights); the black height, or -1 if one is broken.
  int check() const { return root && red(root) ? -1 : check(root, nullptr, 0, UINT64_MAX); }

 private:
  static node *parent(const node *n) { return reinterpret_cast<node *>(n->parent_red & ~uintptr_t{1}); }
  static bool red(const node *n) { return n && (n->parent_red & 1); }
  static void set_parent(node *n, node *p) {
    n->parent_red = reinterpret_cast<uintptr_t>(p) | (n->parent_red & 1);
  }
  static void set_red(node *n, bool r) { n->parent_red = (n->parent_red & ~uintptr_t{1}) | r; }
  static node *leftmost(node *n) {
    while (n->left) n = n->left;
    return n;
  }

  void replace_child(node *p, node *old, node *now) {
    if (!p)
      root = now;
    else if (p->left == old)
      p->left = now;
    else
      p->right = now;
  }
  void transplant(node *u, node *v) {
    replace_child(parent(u), u, v);
    if (v) set_parent(v, parent(u));
  }
  // dir true: rotate left (x's right child rises), false: right.
  void rotate(node *x, bool left) {
    node *y = left ? x->right : x->left;
    node *inner = left ? y->left : y->right;
    (left ? x->right : x->left) = inner;
    if (inner) set_parent(inner, x);
    set_parent(y, parent(x));
    replace_child(parent(x), x, y);
    (left ? y->left : y->right) = x;
    set_parent(x, y);
  }

  void insert_fixup(node *z) {
    for (;;) {
      node *p = parent(z);
      if (!p) {
        set_red(z, false);
        return;
      }
      if (!red(p)) return;
      node *g = parent(p);  // p is red, so not the root
      bool p_left = p == g->left;
      node *uncle = p_left ? g->right : g->left;
      if (red(uncle)) {
        set_red(p, false);
        set_red(uncle, false);
        set_red(g, true);
        z = g;
        continue;
      }
      if (z == (p_left ? p->right : p->left)) {  // inner grandchild: make it outer
        rotate(p, p_left);
        z = p;
        p = parent(z);
      }
      set_red(p, false);
      set_red(g, true);
      rotate(g, !p_left);
      return;
    }
  }

  // x (maybe null) under xp carries one black too few.
  void erase_fixup(node *x, node *xp) {
    while (x != root && !red(x)) {
      bool x_left = x == xp->left;
      node *w = x_left ? xp->right : xp->left;  // never null: x's side lost a black
      if (red(w)) {
        set_red(w, false);
        set_red(xp, true);
        rotate(xp, x_left);
        w = x_left ? xp->right : xp->left;
      }
      node *w_near = x_left ? w->left : w->right, *w_far = x_left ? w->right : w->left;
      if (!red(w_near) && !red(w_far)) {
        set_red(w, true);
        x = xp;
        xp = parent(x);
        continue;
      }
      if (!red(w_far)) {
        set_red(w_near, false);
        set_red(w, true);
        rotate(w, !x_left);
        w = x_left ? xp->right : xp->left;
        w_far = x_left ? w->right : w->left;
      }
      set_red(w, red(xp));
      set_red(xp, false);
      set_red(w_far, false);
      rotate(xp, x_left);
      x = root;
      break;
    }
    if (x) set_red(x, false);
  }

  static int check(const node *n, const node *p, uint64_t lo, uint64_t hi) {
    if (!n) return 1;
    uint64_t k = Key{}(n);
    if (parent(n) != p || k < lo || k > hi) return -1;
    if (red(n) && (red(n->left) || red(n->right))) return -1;
    int l = n->left ? (k == 0 ? -1 : check(n->left, n, lo, k - 1)) : 1;
    int r = n->right ? (k == UINT64_MAX ? -1 : check(n->right, n, k + 1, hi)) : 1;
    if (l < 0 || r < 0 || l != r) return -1;
    return l + !red(n);
  }
};

}  // namespace sysref::rb
