package client

func (s *Server) routesUserData() {}
